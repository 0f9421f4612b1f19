// Package e2e runs the hoptrace binary as a user would: flags, exit
// statuses, output contracts, signals, and real packets on real topologies.
package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// hoptraceBin is the binary built once for the command-line tests.
var hoptraceBin string

// Exit statuses of the hoptrace command.
const (
	exitFail  = 1
	exitUsage = 2
)

func TestMain(m *testing.M) {
	// tools/vmtest/matrix.sh builds the binary once on the host for every
	// kernel: a build inside an emulated VM takes minutes.
	if bin := os.Getenv("HOPTRACE_BIN"); bin != "" {
		hoptraceBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "hoptrace-cli-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755) // the not-root test runs the binary as nobody
	hoptraceBin = filepath.Join(dir, "hoptrace")
	build := exec.Command("go", "build", "-o", hoptraceBin, "../../cmd/hoptrace")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build hoptrace:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is a finished hoptrace run.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs the built binary to completion.
func runCLI(t *testing.T, args ...string) result {
	t.Helper()
	return runCmd(t, exec.Command(hoptraceBin, args...))
}

// runCmd runs a prepared command of the binary to completion.
func runCmd(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", cmd.Args, err)
	}
	return result{code, out.String(), errb.String()}
}
