package main

import (
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/hoptrace/hoptrace/internal/testdocker"
)

// cliMu serialises tests that swap os.Stdout and os.Stderr.
var cliMu sync.Mutex

// runInProcess runs the app in-process and returns its exit code and output.
func runInProcess(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cliMu.Lock()
	defer cliMu.Unlock()
	capture := func(f **os.File) (func() string, error) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		old := *f
		*f = w
		var b strings.Builder
		done := make(chan struct{})
		go func() { io.Copy(&b, r); close(done) }()
		return func() string { w.Close(); <-done; r.Close(); *f = old; return b.String() }, nil
	}
	endOut, err := capture(&os.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	endErr, err := capture(&os.Stderr)
	if err != nil {
		endOut()
		t.Fatal(err)
	}
	code = run(append([]string{"hoptrace"}, args...))
	stderr = endErr()
	stdout = endOut()
	return code, stdout, stderr
}

func TestInspectCommand(t *testing.T) {
	testdocker.RequireDocker(t)
	netName, netID := testdocker.Network(t, "ht-cli-net")
	c := testdocker.Run(t, "ht-cli", "--network", netName)
	code, out, errOut := runInProcess(t, "inspect", c.Name)
	if code != 0 || !strings.Contains(out, "br-"+netID[:12]) || strings.Contains(out, "✗") {
		t.Fatalf("inspect %s: exit %d\n%s%s", c.Name, code, out, errOut)
	}
	code, out, _ = runInProcess(t, "inspect", "--output", "json", c.ID[:12])
	if code != 0 || !strings.Contains(out, `"network": "`+netName+`"`) {
		t.Errorf("inspect --output json: exit %d\n%s", code, out)
	}
	// Flags after the argument mean the same.
	if code, after, _ := runInProcess(t, "inspect", c.ID[:12], "--output", "json"); code != 0 || after != out {
		t.Errorf("inspect ID --output json: exit %d, output differs from inspect --output json ID:\n%s", code, after)
	}

	// Host veth down: a warning, exit status still 0.
	veth := ""
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `"name": "veth`) {
			veth = strings.Trim(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), `"name":`)), `",`)
		}
	}
	l, err := netlink.LinkByName(veth)
	if err != nil {
		t.Fatalf("host veth %q from the JSON output: %v", veth, err)
	}
	if err := netlink.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runInProcess(t, "inspect", c.Name)
	if code != 0 || !strings.Contains(out, "✗ host veth "+veth+" is down") || !strings.Contains(out, "warning") {
		t.Errorf("inspect with %s down: exit %d\n%s", veth, code, out)
	}

	// Errors: one line, exit 1; usage errors exit 2.
	stopped := testdocker.Run(t, "ht-cli-stopped")
	testdocker.Docker(t, "stop", "-t", "0", stopped.Name)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inspect", "ht-cli-no-such-container"}, 1, `hoptrace: no such container "ht-cli-no-such-container"`},
		{[]string{"inspect", stopped.Name}, 1, "hoptrace: container " + stopped.Name + " is not running"},
		{[]string{"inspect"}, 2, "hoptrace: inspect takes one CONTAINER"},
		{[]string{"inspect", "--output", "yaml", c.Name}, 2, "hoptrace: --output must be one of text, json"},
		{[]string{"inspect", c.Name, "-o", "yaml"}, 2, "hoptrace: --output must be one of text, json"},
	} {
		code, out, errOut := runInProcess(t, tc.args...)
		if code != tc.code || !strings.HasPrefix(errOut, tc.want) || strings.Count(errOut, "\n") != 1 || out != "" {
			t.Errorf("%v: exit %d, stderr %q, stdout %q; want exit %d and one line starting %q", tc.args, code, errOut, out, tc.code, tc.want)
		}
	}

	host := testdocker.Run(t, "ht-cli-host", "--network", "host")
	none := testdocker.Run(t, "ht-cli-none", "--network", "none")
	if code, out, _ := runInProcess(t, "inspect", host.Name); code != 0 || !strings.Contains(out, host.Name+" shares the host network namespace") {
		t.Errorf("inspect host-mode: exit %d\n%s", code, out)
	}
	if code, out, _ := runInProcess(t, "inspect", none.Name); code != 0 || !strings.Contains(out, none.Name+" has no network path") {
		t.Errorf("inspect none-mode: exit %d\n%s", code, out)
	}
}

func TestInspectCommandDaemonUnreachable(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix:///nonexistent.sock")
	code, out, errOut := runInProcess(t, "inspect", "anything")
	want := "hoptrace: cannot reach the Docker daemon at unix:///nonexistent.sock"
	if code != 1 || !strings.HasPrefix(errOut, want) || !strings.Contains(errOut, "DOCKER_HOST") || out != "" {
		t.Errorf("exit %d, stderr %q; want exit 1 and %q…", code, errOut, want)
	}
}

func TestTopologyCommand(t *testing.T) {
	testdocker.RequireDocker(t)
	c := testdocker.Run(t, "ht-cli-topo")
	for _, cmd := range []string{"topology", "ls"} {
		code, out, errOut := runInProcess(t, cmd)
		if code != 0 || !strings.Contains(out, "docker0") || !strings.Contains(out, "container "+c.Name) {
			t.Errorf("%s: exit %d\n%s%s", cmd, code, out, errOut)
		}
	}
	code, out, _ := runInProcess(t, "ls", "-o", "dot")
	if code != 0 || !strings.HasPrefix(out, "graph hoptrace {") {
		t.Fatalf("ls -o dot: exit %d\n%s", code, out)
	}
	// That Graphviz renders it is tracer/topology's test (renderDOT).
	if code, out, _ := runInProcess(t, "ls", "--output", "mermaid"); code != 0 || !strings.HasPrefix(out, "flowchart LR") {
		t.Errorf("ls --output mermaid: exit %d\n%s", code, out)
	}
	// --format, the old name, still works for a release, with a note.
	if code, out, errOut := runInProcess(t, "ls", "-f", "mermaid"); code != 0 || !strings.HasPrefix(out, "flowchart LR") || !strings.Contains(errOut, "--format is now --output") {
		t.Errorf("ls -f mermaid: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := runInProcess(t, "ls", "-o", "png"); code != 2 || !strings.Contains(errOut, "--output must be one of") {
		t.Errorf("ls -o png: exit %d, %q", code, errOut)
	}
}

// Container names are completed from Docker where a container is expected.
func TestCompletionContainerNames(t *testing.T) {
	testdocker.RequireDocker(t)
	c := testdocker.Run(t, "ht-cli-complete")
	bin := testBinary(t)
	for _, words := range [][]string{
		{"inspect"},
		{"verify", "-o", "json"},
		{"trace", "--container"},
		{"latency", "-C"},
	} {
		out, err := exec.Command(bin, append(words, completionFlag)...).Output()
		if err != nil {
			t.Fatalf("hoptrace %s: %v", strings.Join(words, " "), err)
		}
		if !slices.Contains(strings.Fields(string(out)), c.Name) {
			t.Errorf("hoptrace %s <TAB> = %q, want container %s among the candidates", strings.Join(words, " "), out, c.Name)
		}
	}
	// A CONTAINER already given: nothing more to complete.
	if out, _ := exec.Command(bin, "inspect", c.Name, completionFlag).Output(); len(out) != 0 {
		t.Errorf("inspect %s <TAB> = %q, want nothing", c.Name, out)
	}
}
