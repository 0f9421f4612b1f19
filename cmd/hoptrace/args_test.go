package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hoptrace/hoptrace/internal/privtest"
)

func TestFlagsFirst(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want string }{
		{"inspect web -o json", "inspect -o json web"},
		{"inspect web --output=json", "inspect --output=json web"},
		{"verify web --proto udp --port 53 -c 1", "verify --proto udp --port 53 -c 1 web"},
		{"verify --to db web --all", "verify --to db --all web"},
		{"verify -- -odd-name -o json", "verify -- -odd-name -o json"},
		{"inspect -o json -- web", "inspect -o json web"},
		{"ls extra --format dot", "ls --format dot extra"},
		// trace's words after the flags are an expression: left in order.
		{"trace -c 1 icmp and host 10.0.0.1", "trace -c 1 icmp and host 10.0.0.1"},
		{"--help inspect web -o json", "--help inspect -o json web"},
		{"inspect web --generate-bash-completion", "inspect web --generate-bash-completion"},
		{"inspect web -o json --generate-bash-completion", "inspect -o json web --generate-bash-completion"},
		{"unknown a -b", "unknown a -b"},
	} {
		in := append([]string{"hoptrace"}, strings.Fields(tc.in)...)
		got := strings.Join(flagsFirst(app, in)[1:], " ")
		if got != tc.want {
			t.Errorf("flagsFirst(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Every command accepts its flags after its arguments: a bad value given
// after the argument is reported as a usage error about that flag, not as
// an extra argument.
func TestFlagsAfterArguments(t *testing.T) {
	for _, args := range [][]string{
		{"inspect", "web", "--output", "yaml"},
		{"verify", "web", "-o", "yaml"},
		{"verify", "web", "--count", "0"},
		{"topology", "-o", "png"},
		{"doctor", "--output", "xml"},
	} {
		out, code := captureRun(t, args...)
		if code != exitUsage {
			t.Errorf("hoptrace %s: exit %d, want %d (usage)", strings.Join(args, " "), code, exitUsage)
		}
		if strings.Contains(out, "takes one") || strings.Contains(out, "no arguments") {
			t.Errorf("hoptrace %s: a flag after the argument was taken as an argument: %s", strings.Join(args, " "), out)
		}
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" && binPath != os.Getenv("HOPTRACE_BIN") { // only what testBinary built
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// testBinary builds hoptrace once for the tests that run it as a process.
func testBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		// tools/vmtest/matrix.sh builds it once on the host for every kernel.
		if bin := os.Getenv("HOPTRACE_BIN"); bin != "" {
			binPath = bin
			return
		}
		dir, err := os.MkdirTemp("", "hoptrace-cmd-test-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "hoptrace")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// captureRun runs the command line and returns what it wrote to stderr.
func captureRun(t *testing.T, args ...string) (string, int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stderr
	os.Stderr = w
	code := run(append([]string{"hoptrace"}, args...))
	os.Stderr = saved
	w.Close()
	var buf bytes.Buffer
	buf.ReadFrom(r)
	r.Close()
	return buf.String(), code
}

func TestVersion(t *testing.T) {
	privtest.SameOnEveryKernel(t, "version stamping is a build flag, and a build inside an emulated VM takes minutes")
	bin := filepath.Join(t.TempDir(), "hoptrace")
	build := exec.Command("go", "build", "-ldflags", "-X main.buildVersion=v9.8.7 -X main.buildCommit=0123456789abcdef0123", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("hoptrace --version: %v: %s", err, out)
	}
	if want := "hoptrace version v9.8.7 (commit 0123456789ab, go"; !strings.HasPrefix(string(out), want) {
		t.Errorf("hoptrace --version = %q, want prefix %q", out, want)
	}
	// Without -ldflags: the module version and the revision Go recorded.
	bi := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "fedcba9876543210fedcba"}, {Key: "vcs.modified", Value: "true"},
	}}
	if got, want := versionOf("", "", bi), "v1.2.3 (commit fedcba987654, modified, go1.26.0)"; got != want {
		t.Errorf("versionOf(build info) = %q, want %q", got, want)
	}
	if got, want := versionOf("", "", nil), "(devel) (commit unknown)"; got != want {
		t.Errorf("versionOf(nothing) = %q, want %q", got, want)
	}
}

func TestCompletion(t *testing.T) {
	privtest.SameOnEveryKernel(t, "shell completion is userspace")
	bin := testBinary(t)
	complete := func(words ...string) []string {
		t.Helper()
		out, err := exec.Command(bin, append(words, completionFlag)...).Output()
		if err != nil {
			t.Fatalf("hoptrace %s %s: %v", strings.Join(words, " "), completionFlag, err)
		}
		return strings.Fields(string(out))
	}
	cmds := complete()
	for _, want := range []string{"trace", "latency", "inspect", "topology", "verify", "doctor", "completion"} {
		if !slices.Contains(cmds, want) {
			t.Errorf("commands completed: %v, want %q among them", cmds, want)
		}
	}
	if flags := complete("inspect", "--o"); !slices.Contains(flags, "--output") {
		t.Errorf("inspect --o completed to %v, want --output", flags)
	}
	if shells := complete("completion"); !slices.Equal(shells, []string{"bash", "zsh"}) {
		t.Errorf("completion's argument completed to %v, want [bash zsh]", shells)
	}
	for _, shell := range []string{"bash", "zsh"} {
		script, err := exec.Command(bin, "completion", shell).Output()
		if err != nil {
			t.Fatalf("hoptrace completion %s: %v", shell, err)
		}
		if !regexp.MustCompile(`--generate-bash-completion`).Match(script) {
			t.Errorf("%s script does not ask hoptrace for candidates:\n%s", shell, script)
		}
		check := exec.Command(privtest.Tool(t, shell, shell), "-n")
		check.Stdin = bytes.NewReader(script)
		if out, err := check.CombinedOutput(); err != nil {
			t.Errorf("%s -n rejects the completion script: %v: %s", shell, err, out)
		}
	}
	if _, code := captureRun(t, "completion", "fish"); code != exitUsage {
		t.Errorf("completion fish: exit %d, want %d", code, exitUsage)
	}
}
