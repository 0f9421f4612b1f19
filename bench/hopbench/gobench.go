package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
)

// GoBench is one `go test -bench` result line.
type GoBench struct {
	Package string             `json:"package"`
	Name    string             `json:"name"`
	N       int64              `json:"n"`
	Metrics map[string]float64 `json:"metrics"` // ns/op, B/op, allocs/op, custom units
}

// goBenchPackages hold the userspace hot path benchmarks, and tracer/loader
// the tcx program's (BPF_PROG_TEST_RUN: root).
var goBenchPackages = []string{"./tracer/event", "./tracer/path", "./tracer/resolve", "./tracer/output", "./tracer/latency", "./tracer/loader"}

// RunGoBench runs the hot path benchmarks on one core (GOMAXPROCS=1, so the
// garbage collector shares that core too).
func RunGoBench(ctx context.Context, goCmd string, benchtime string, log io.Writer) ([]GoBench, string, error) {
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-cpu", "1", "-count", "1", "-benchtime", benchtime}, goBenchPackages...)
	cmd := exec.CommandContext(ctx, goCmd, args...)
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(&out, log)
	cmd.Stderr = log
	err := cmd.Run()
	return parseGoBench(out.String()), goCmd + " " + strings.Join(args, " "), err
}

func parseGoBench(out string) []GoBench {
	var res []GoBench
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "pkg: ") {
			pkg = strings.TrimPrefix(line, "pkg: ")
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		b := GoBench{Package: pkg, Name: f[0], N: n, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			b.Metrics[f[i+1]] = v
		}
		res = append(res, b)
	}
	return res
}

func (b GoBench) String() string {
	return fmt.Sprintf("%s %s %v", b.Package, b.Name, b.Metrics)
}
