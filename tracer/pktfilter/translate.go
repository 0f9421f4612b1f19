package pktfilter

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"
)

// The translated program runs as the body of a BPF-to-BPF function in a
// tracing program (bpf/hoptrace.bpf.c: pcap_filter). It is called with
//
//	R1 = the frame's kernel address, R2 = bytes readable there, R3 = wire length
//
// and returns, in R0, libpcap's result: nonzero when the frame matches.
//
// A tracing program may not dereference a kernel address itself, so every
// packet load becomes a bounds check against the readable length and a
// bpf_probe_read_kernel into the stack. The helper clobbers R0-R5, so the
// classic machine lives in callee-saved registers: A in R6, X in R7, the
// frame in R8 and R9; the wire length and the scratch memory M[0..15] live
// on the stack. Classic BPF's semantics are kept: a load out of bounds or a
// division by zero ends the program with 0 (no match), and ALU operations
// are 32-bit.
const (
	regA     = asm.R6
	regX     = asm.R7
	regFrame = asm.R8
	regLen   = asm.R9

	stackRead = -8  // bpf_probe_read_kernel's destination
	stackWire = -16 // the wire length
	// M[i] (32 bits) at stackMem - 4*i, down to -80: the frame adds to
	// the calling program's on the 512-byte combined stack (5.10 counts
	// each frame in 32-byte steps: 96 bytes here, 160 with 8-byte words)
	stackMem = -20
	memWords = 16
)

// label names the eBPF instruction where classic instruction i starts;
// labels are unique within one BPF program.
func label(i int) string { return fmt.Sprintf("hoptrace_pf_%d", i) }

const labelFail = "hoptrace_pf_fail"

// Translate turns a classic BPF program into the eBPF body of pcap_filter.
// It refuses what it cannot run exactly: Linux's ancillary loads (SKF_AD_*,
// negative offsets) and jumps that do not go forward (libpcap's protochain).
func Translate(prog []bpf.RawInstruction) (asm.Instructions, error) {
	if len(prog) == 0 {
		return nil, fmt.Errorf("empty program")
	}
	insns := asm.Instructions{
		asm.Mov.Reg(regFrame, asm.R1),
		asm.Mov.Reg(regLen, asm.R2),
		asm.StoreMem(asm.RFP, stackWire, asm.R3, asm.DWord),
		asm.Mov.Imm(regA, 0),
		asm.Mov.Imm(regX, 0),
	}
	for i := 0; i < memWords; i++ {
		insns = append(insns, asm.StoreImm(asm.RFP, int16(stackMem-4*i), 0, asm.Word))
	}
	// The verifier refuses unreachable instructions: translate only what
	// the program can reach, and the failure exit only when it is used.
	reach, err := reachable(prog)
	if err != nil {
		return nil, err
	}
	for i, raw := range prog {
		if !reach[i] {
			continue
		}
		body, err := translateOne(i, len(prog), raw.Disassemble())
		if errors.Is(err, errBackward) {
			return nil, err
		}
		if err != nil {
			return nil, fmt.Errorf("instruction %d (%s): %w", i, describe(raw), err)
		}
		if i > 0 {
			body[0] = body[0].WithSymbol(label(i))
		}
		insns = append(insns, body...)
	}
	for _, ins := range insns {
		if ins.Reference() == labelFail {
			insns = append(insns,
				asm.Mov.Imm(asm.R0, 0).WithSymbol(labelFail),
				asm.Return(),
			)
			break
		}
	}
	return insns, nil
}

// reachable marks the instructions control can reach from the first.
func reachable(prog []bpf.RawInstruction) ([]bool, error) {
	reach := make([]bool, len(prog))
	reach[0] = true
	for i, raw := range prog {
		if !reach[i] {
			continue
		}
		var next []uint32
		switch in := raw.Disassemble().(type) {
		case bpf.RetA, bpf.RetConstant:
		case bpf.Jump:
			next = []uint32{in.Skip}
		case bpf.JumpIf:
			next = []uint32{uint32(in.SkipTrue), uint32(in.SkipFalse)}
		case bpf.JumpIfX:
			next = []uint32{uint32(in.SkipTrue), uint32(in.SkipFalse)}
		default:
			next = []uint32{0}
		}
		for _, skip := range next {
			t := uint64(i) + 1 + uint64(skip)
			if t >= uint64(len(prog)) {
				if len(next) == 1 && skip == 0 {
					return nil, fmt.Errorf("the program does not end with a return")
				}
				return nil, errBackward
			}
			reach[t] = true
		}
	}
	return reach, nil
}

func describe(raw bpf.RawInstruction) string {
	if s, ok := raw.Disassemble().(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("op 0x%x", raw.Op)
}

// errBackward: libpcap's only backward jumps are protochain's loop.
var errBackward = errors.New("protochain is not supported: libpcap compiles it to a backward jump, which hoptrace does not run in the kernel")

// target is the label of a forward jump from instruction i over skip instructions.
func target(i, n int, skip uint32) (string, error) {
	t := uint64(i) + 1 + uint64(skip)
	if t >= uint64(n) {
		return "", errBackward
	}
	return label(int(t)), nil
}

func sizeOf(n int) (asm.Size, error) {
	switch n {
	case 1:
		return asm.Byte, nil
	case 2:
		return asm.Half, nil
	case 4:
		return asm.Word, nil
	}
	return 0, fmt.Errorf("load of %d bytes", n)
}

// readAt loads size bytes at frame+R3's offset into dst, big-endian as
// classic BPF loads are; R3 holds the offset, already bounds-checked.
func readAt(dst asm.Register, size asm.Size) asm.Instructions {
	insns := asm.Instructions{
		asm.Add.Reg(asm.R3, regFrame),
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, stackRead),
		asm.Mov.Imm(asm.R2, int32(size.Sizeof())),
		asm.FnProbeReadKernel.Call(),
		asm.JNE.Imm(asm.R0, 0, labelFail),
		asm.LoadMem(dst, asm.RFP, stackRead, size),
	}
	if size != asm.Byte {
		insns = append(insns, asm.HostTo(asm.BE, dst, size))
	}
	return insns
}

// loadAbs loads size bytes at a constant offset, or fails when they are out of bounds.
func loadAbs(dst asm.Register, off uint32, n int) (asm.Instructions, error) {
	size, err := sizeOf(n)
	if err != nil {
		return nil, err
	}
	if off >= 1<<31-8 {
		return nil, fmt.Errorf("offset %d (a Linux-specific negative offset or an ancillary load)", int32(off))
	}
	insns := asm.Instructions{
		asm.JLT.Imm(regLen, int32(off)+int32(n), labelFail),
		asm.Mov.Imm(asm.R3, int32(off)),
	}
	return append(insns, readAt(dst, size)...), nil
}

func translateOne(i, n int, ins bpf.Instruction) (asm.Instructions, error) {
	switch in := ins.(type) {
	case bpf.LoadAbsolute:
		return loadAbs(regA, in.Off, in.Size)
	case bpf.LoadIndirect:
		size, err := sizeOf(in.Size)
		if err != nil {
			return nil, err
		}
		insns := asm.Instructions{
			// offset = X + k in 32 bits, as the kernel computes it
			asm.Mov.Reg32(asm.R3, regX),
			asm.Add.Imm32(asm.R3, int32(in.Off)),
			asm.Mov.Reg(asm.R4, asm.R3),
			asm.Add.Imm(asm.R4, int32(in.Size)),
			asm.JGT.Reg(asm.R4, regLen, labelFail),
		}
		return append(insns, readAt(regA, size)...), nil
	case bpf.LoadMemShift:
		insns, err := loadAbs(regX, in.Off, 1)
		if err != nil {
			return nil, err
		}
		return append(insns, asm.And.Imm32(regX, 0xf), asm.LSh.Imm32(regX, 2)), nil
	case bpf.LoadConstant:
		return asm.Instructions{asm.Mov.Imm32(reg(in.Dst), int32(in.Val))}, nil
	case bpf.LoadScratch:
		if in.N < 0 || in.N >= memWords {
			return nil, fmt.Errorf("scratch slot %d", in.N)
		}
		return asm.Instructions{asm.LoadMem(reg(in.Dst), asm.RFP, int16(stackMem-4*in.N), asm.Word)}, nil
	case bpf.StoreScratch:
		if in.N < 0 || in.N >= memWords {
			return nil, fmt.Errorf("scratch slot %d", in.N)
		}
		return asm.Instructions{asm.StoreMem(asm.RFP, int16(stackMem-4*in.N), reg(in.Src), asm.Word)}, nil
	case bpf.LoadExtension:
		if in.Num != bpf.ExtLen {
			return nil, fmt.Errorf("Linux ancillary data (extension %d) is not available here", in.Num)
		}
		return asm.Instructions{asm.LoadMem(regA, asm.RFP, stackWire, asm.Word)}, nil
	case bpf.ALUOpConstant:
		return aluConst(in.Op, in.Val)
	case bpf.ALUOpX:
		return aluX(in.Op)
	case bpf.NegateA:
		return asm.Instructions{asm.Neg.Imm32(regA, 0)}, nil
	case bpf.Jump:
		t, err := target(i, n, in.Skip)
		if err != nil {
			return nil, err
		}
		return asm.Instructions{asm.Ja.Label(t)}, nil
	case bpf.JumpIf:
		return condJump(i, n, in.Cond, in.SkipTrue, in.SkipFalse, func(op asm.JumpOp, l string) asm.Instruction {
			return op.Imm32(regA, int32(in.Val), l)
		})
	case bpf.JumpIfX:
		return condJump(i, n, in.Cond, in.SkipTrue, in.SkipFalse, func(op asm.JumpOp, l string) asm.Instruction {
			return op.Reg32(regA, regX, l)
		})
	case bpf.RetA:
		return asm.Instructions{asm.Mov.Reg32(asm.R0, regA), asm.Return()}, nil
	case bpf.RetConstant:
		return asm.Instructions{asm.Mov.Imm32(asm.R0, int32(in.Val)), asm.Return()}, nil
	case bpf.TAX:
		return asm.Instructions{asm.Mov.Reg32(regX, regA)}, nil
	case bpf.TXA:
		return asm.Instructions{asm.Mov.Reg32(regA, regX)}, nil
	}
	return nil, fmt.Errorf("unsupported instruction")
}

func reg(r bpf.Register) asm.Register {
	if r == bpf.RegX {
		return regX
	}
	return regA
}

var aluOps = map[bpf.ALUOp]asm.ALUOp{
	bpf.ALUOpAdd:        asm.Add,
	bpf.ALUOpSub:        asm.Sub,
	bpf.ALUOpMul:        asm.Mul,
	bpf.ALUOpDiv:        asm.Div,
	bpf.ALUOpOr:         asm.Or,
	bpf.ALUOpAnd:        asm.And,
	bpf.ALUOpShiftLeft:  asm.LSh,
	bpf.ALUOpShiftRight: asm.RSh,
	bpf.ALUOpMod:        asm.Mod,
	bpf.ALUOpXor:        asm.Xor,
}

func aluConst(op bpf.ALUOp, k uint32) (asm.Instructions, error) {
	o, ok := aluOps[op]
	if !ok {
		return nil, fmt.Errorf("ALU operation %d", op)
	}
	if (op == bpf.ALUOpDiv || op == bpf.ALUOpMod) && k == 0 {
		return asm.Instructions{asm.Ja.Label(labelFail)}, nil
	}
	return asm.Instructions{o.Imm32(regA, int32(k))}, nil
}

func aluX(op bpf.ALUOp) (asm.Instructions, error) {
	o, ok := aluOps[op]
	if !ok {
		return nil, fmt.Errorf("ALU operation %d", op)
	}
	var insns asm.Instructions
	if op == bpf.ALUOpDiv || op == bpf.ALUOpMod {
		// classic BPF ends with 0 on a division by zero; eBPF would go on
		insns = append(insns, asm.JEq.Imm32(regX, 0, labelFail))
	}
	return append(insns, o.Reg32(regA, regX)), nil
}

var jumpOps = map[bpf.JumpTest]asm.JumpOp{
	bpf.JumpEqual:          asm.JEq,
	bpf.JumpNotEqual:       asm.JNE,
	bpf.JumpGreaterThan:    asm.JGT,
	bpf.JumpLessThan:       asm.JLT,
	bpf.JumpGreaterOrEqual: asm.JGE,
	bpf.JumpLessOrEqual:    asm.JLE,
	bpf.JumpBitsSet:        asm.JSet,
}

// condJump jumps to the true or false branch; x/net/bpf normalises the
// conditions, so both senses of each comparison appear.
func condJump(i, n int, cond bpf.JumpTest, skipTrue, skipFalse uint8, jump func(asm.JumpOp, string) asm.Instruction) (asm.Instructions, error) {
	tTrue, err := target(i, n, uint32(skipTrue))
	if err != nil {
		return nil, err
	}
	tFalse, err := target(i, n, uint32(skipFalse))
	if err != nil {
		return nil, err
	}
	op, ok := jumpOps[cond]
	if cond == bpf.JumpBitsNotSet {
		// no eBPF "none of the bits": the opposite test with the branches swapped
		op, ok = asm.JSet, true
		tTrue, tFalse = tFalse, tTrue
	}
	if !ok {
		return nil, fmt.Errorf("jump condition %d", cond)
	}
	if tTrue == tFalse {
		return asm.Instructions{asm.Ja.Label(tTrue)}, nil
	}
	insns := asm.Instructions{jump(op, tTrue)}
	if tFalse != label(i+1) {
		insns = append(insns, asm.Ja.Label(tFalse))
	}
	return insns, nil
}
