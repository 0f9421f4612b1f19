// Command summarize prints the per-kernel summary of a test-kernels run:
// for each N.meta file (label, release, seconds, exit) it reads the
// matching N.json (go test -json) and N.stderr, then prints one table row
// per kernel and, below, every package's result with the failed and
// skipped tests and why. It exits 1 when any kernel had a failure.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
)

type event struct {
	Action     string
	Package    string
	ImportPath string // build-output and build-fail events: "pkg [pkg.test]"
	// FailedBuild names the package whose build failed on a package "fail".
	FailedBuild string

	Test    string
	Output  string
	Elapsed float64
}

type testResult struct {
	name, action string
	output       []string
}

type pkgResult struct {
	name                string
	action              string // pass, fail, skip ("" = never finished)
	elapsed             float64
	pass, fail, skip    int
	tests               map[string]*testResult
	order               []string
	output, buildOutput []string
	failedBuild         string
}

type kernelRun struct {
	label, release, seconds, exit, err string
	pkgs                               map[string]*pkgResult
	order                              []string
	stderr                             string
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: summarize N.meta...")
		os.Exit(2)
	}
	var runs []*kernelRun
	for _, m := range os.Args[1:] {
		r, err := load(m)
		if err != nil {
			fmt.Fprintln(os.Stderr, "summarize:", err)
			os.Exit(2)
		}
		runs = append(runs, r)
	}
	failed := report(os.Stdout, runs)
	if failed {
		os.Exit(1)
	}
}

func load(metaPath string) (*kernelRun, error) {
	b, err := os.ReadFile(metaPath)
	if err != nil {
		return nil, err
	}
	r := &kernelRun{pkgs: map[string]*pkgResult{}}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "label":
			r.label = v
		case "release":
			r.release = v
		case "seconds":
			r.seconds = v
		case "exit":
			r.exit = v
		case "error":
			r.err = v
		}
	}
	base := strings.TrimSuffix(metaPath, ".meta")
	if s, err := os.ReadFile(base + ".stderr"); err == nil {
		r.stderr = strings.TrimSpace(string(s))
	}
	f, err := os.Open(base + ".json")
	if err != nil {
		if r.err != "" {
			return r, nil
		}
		return nil, err
	}
	defer f.Close()
	return r, r.parse(f)
}

func (r *kernelRun) pkg(name string) *pkgResult {
	p := r.pkgs[name]
	if p == nil {
		p = &pkgResult{name: name, tests: map[string]*testResult{}}
		r.pkgs[name] = p
		r.order = append(r.order, name)
	}
	return p
}

func (r *kernelRun) parse(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 1<<16), 1<<24)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			continue
		}
		if e.Package == "" {
			e.Package, _, _ = strings.Cut(e.ImportPath, " ")
		}
		if e.Package == "" || strings.HasSuffix(e.Package, ".test") {
			continue
		}
		p := r.pkg(e.Package)
		if e.Test == "" {
			switch e.Action {
			case "pass", "fail", "skip":
				p.action, p.elapsed, p.failedBuild = e.Action, e.Elapsed, e.FailedBuild
			case "output":
				p.output = append(p.output, e.Output)
			case "build-output":
				p.buildOutput = append(p.buildOutput, e.Output)
			}
			continue
		}
		t := p.tests[e.Test]
		if t == nil {
			t = &testResult{name: e.Test}
			p.tests[e.Test] = t
			p.order = append(p.order, e.Test)
		}
		switch e.Action {
		case "output":
			t.output = append(t.output, e.Output)
		case "pass", "fail", "skip":
			t.action = e.Action
		}
	}
	for _, p := range r.pkgs {
		for _, t := range p.tests {
			if strings.Contains(t.name, "/") {
				continue // subtests are listed but counted through their parent
			}
			switch t.action {
			case "pass":
				p.pass++
			case "fail":
				p.fail++
			case "skip":
				p.skip++
			}
		}
	}
	return sc.Err()
}

func (r *kernelRun) totals() (pass, fail, skip int, ok bool) {
	ok = r.err == "" && r.exit == "0"
	for _, p := range r.pkgs {
		pass += p.pass
		fail += p.fail
		skip += p.skip
		if p.action != "pass" && p.action != "skip" {
			ok = false
		}
	}
	if len(r.pkgs) == 0 {
		ok = false
	}
	return
}

func report(w io.Writer, runs []*kernelRun) (anyFailed bool) {
	fmt.Fprintln(w, "\n=== test-kernels summary ===")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KERNEL\tRELEASE\tRESULT\tPKGS\tTESTS PASSED\tFAILED\tSKIPPED\tTIME")
	for _, r := range runs {
		pass, fail, skip, ok := r.totals()
		res := "ok"
		if !ok {
			res, anyFailed = "FAIL", true
		}
		npkg := 0
		for _, p := range r.pkgs {
			if p.action != "" || len(p.buildOutput) == 0 {
				npkg++
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%ss\n", r.label, r.release, res, npkg, pass, fail, skip, r.seconds)
	}
	tw.Flush()
	for _, r := range runs {
		fmt.Fprintf(w, "\n--- %s (%s)\n", r.label, r.release)
		if r.err != "" {
			fmt.Fprintf(w, "  ERROR %s\n", r.err)
		}
		names := append([]string(nil), r.order...)
		sort.Strings(names)
		for _, name := range names {
			p := r.pkgs[name]
			status := map[string]string{"pass": "ok", "fail": "FAIL", "skip": "no tests"}[p.action]
			switch {
			case status == "" && len(p.buildOutput) > 0:
				fmt.Fprintf(w, "  %-8s %s\n           %s\n", "BUILD", strings.TrimPrefix(name, "github.com/hoptrace/hoptrace/"), tail(p.buildOutput, 6))
				continue
			case status == "":
				status = "FAIL"
			}
			fmt.Fprintf(w, "  %-8s %s  (%d passed, %d failed, %d skipped, %.1fs)\n",
				status, strings.TrimPrefix(name, "github.com/hoptrace/hoptrace/"), p.pass, p.fail, p.skip, p.elapsed)
			if len(p.buildOutput) > 0 {
				fmt.Fprintf(w, "           build: %s\n", tail(p.buildOutput, 6))
			}
			var passed []string
			for _, tn := range p.order {
				if t := p.tests[tn]; t.action == "pass" && !strings.Contains(tn, "/") {
					passed = append(passed, tn)
				}
			}
			if len(passed) > 0 {
				fmt.Fprintf(w, "           passed: %s\n", wrap(passed, 90))
			}
			for _, tn := range p.order {
				t := p.tests[tn]
				switch t.action {
				case "fail":
					fmt.Fprintf(w, "           FAIL %s: %s\n", tn, why(t.output, 3))
				case "skip":
					fmt.Fprintf(w, "           SKIP %s: %s\n", tn, why(t.output, 1))
				}
			}
			if p.failedBuild != "" {
				fmt.Fprintf(w, "           not built: %s does not compile\n", strings.TrimPrefix(p.failedBuild, "github.com/hoptrace/hoptrace/"))
			} else if p.action != "pass" && p.action != "skip" && p.fail == 0 {
				// The binary failed outside any test: VM failure, panic, timeout.
				fmt.Fprintf(w, "           %s\n", tail(p.output, 6))
			}
		}
		if _, _, _, ok := r.totals(); !ok && r.stderr != "" {
			fmt.Fprintf(w, "  stderr: %s\n", indent(lastLines(r.stderr, 10)))
		}
	}
	return anyFailed
}

// why picks the test's own messages (file.go:N: ...), at most n of them.
func why(out []string, n int) string {
	var msgs []string
	for _, l := range out {
		s := strings.TrimSpace(l)
		if s == "" || strings.HasPrefix(s, "=== ") || strings.HasPrefix(s, "--- ") {
			continue
		}
		msgs = append(msgs, s)
	}
	if len(msgs) > n {
		// For failures the first messages are usually setup logs; prefer
		// lines that report an error.
		var errs []string
		for _, m := range msgs {
			if strings.Contains(m, "rror") || strings.Contains(m, "want") || strings.Contains(m, "FAIL") || strings.Contains(m, "fail") {
				errs = append(errs, m)
			}
		}
		if len(errs) > 0 {
			msgs = errs
		}
		if len(msgs) > n {
			msgs = msgs[:n]
		}
	}
	if len(msgs) == 0 {
		return "(no message)"
	}
	for i, m := range msgs {
		if len(m) > 240 {
			msgs[i] = m[:240] + "..."
		}
	}
	return strings.Join(msgs, " | ")
}

func tail(out []string, n int) string {
	var lines []string
	for _, l := range out {
		if s := strings.TrimRight(l, "\n"); s != "" {
			lines = append(lines, s)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return indent(strings.Join(lines, "\n"))
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n           ") }

// wrap joins words into lines of about width characters.
func wrap(words []string, width int) string {
	var b strings.Builder
	n := 0
	for i, w := range words {
		if i > 0 {
			if n+1+len(w) > width {
				b.WriteString("\n                   ")
				n = 0
			} else {
				b.WriteByte(' ')
				n++
			}
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}
