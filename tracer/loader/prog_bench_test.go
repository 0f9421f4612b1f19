package loader

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
)

// skbCtx is the head of struct __sk_buff up to ifindex, the one field a
// test run of a tc program is given: the device its skb is on.
type skbCtx struct {
	_       [10]uint32
	Ifindex uint32
}

// udpFrame is an Ethernet, IPv4 and UDP frame with a 64-byte payload (the
// bench's UDP 64 B packet).
func udpFrame() []byte {
	f := make([]byte, 14+20+8+64)
	copy(f[0:6], []byte{0x02, 0, 0, 0, 0, 2})
	copy(f[6:12], []byte{0x02, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-14))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	copy(ip[12:16], []byte{10, 231, 0, 2})
	copy(ip[16:20], []byte{10, 231, 0, 3})
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 5201)
	binary.BigEndian.PutUint16(udp[4:], 8+64)
	return f
}

// benchTCX runs the tcx egress program on one skb, runs per call, and
// reports the mean time per program run (BPF_PROG_TEST_RUN, timed around
// the call: a syscall and an skb's allocation per 10000 runs):
// the cost of the program alone, without the traffic's noise. The skb is
// the same on every run, so after its first run it is a tracked packet at
// every run (a hop of a packet seen before) unless the selection turns it
// away. drain, when set, empties the ring buffer between calls, so that
// every record is reserved rather than lost.
func benchTCX(b *testing.B, opts Options, drain bool) {
	privtest.RequireTCX(b, "")
	topo := testnet.New(b, testnet.Options{Hosts: 1})
	opts.Engine = EngineTCX
	tr, err := Load(opts)
	if err != nil {
		b.Fatalf("load: %v", err)
	}
	defer tr.Close()
	var rd *ringbuf.Reader
	if drain {
		if rd, err = ringbuf.NewReader(tr.Events()); err != nil {
			b.Fatal(err)
		}
		defer rd.Close()
	}
	const runs = 10000
	frame := udpFrame()
	ctx := skbCtx{Ifindex: uint32(topo.Hosts[0].HostVethIndex)}
	var total time.Duration
	b.ResetTimer()
	for range b.N {
		ro := ebpf.RunOptions{Data: frame, Context: ctx, Repeat: runs}
		start := time.Now()
		if _, err := tr.tcx.egress.Run(&ro); err != nil {
			b.Fatalf("test run: %v", err)
		}
		total += time.Since(start) // one syscall and skb for 10000 runs
		if rd != nil {
			b.StopTimer()
			rd.SetDeadline(time.Now())
			for {
				if _, err := rd.Read(); err != nil {
					break
				}
			}
			b.StartTimer()
		}
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N)/runs, "ns/run")
	st, err := tr.Stats()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(st.Lost)/float64(b.N*runs), "lost/run")
}

// A tracked packet's hop under latency: lookup, parse, fingerprints,
// the in-flight entry updated, a histogram pair updated.
func BenchmarkTCXHopLatency(b *testing.B) { benchTCX(b, Options{Mode: ModeLatency}, false) }

// The same under trace: a 168-byte ring buffer record instead of the histogram.
func BenchmarkTCXHopTrace(b *testing.B) { benchTCX(b, Options{Mode: ModeEvents}, true) }

// An unselected packet while nothing selected was seen (the quiet state):
// the cost every other container's traffic pays at each device.
func BenchmarkTCXUnselected(b *testing.B) {
	benchTCX(b, Options{Mode: ModeEvents, FilterKinds: FilterNetns | FilterAddr}, false)
}
