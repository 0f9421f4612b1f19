package testdocker

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hoptrace/hoptrace/internal/privtest"
)

// Daemon is a second dockerd a test started, confined to a network
// namespace of the test's own: its bridge (docker0 there), its iptables
// rules and its containers' host-side veths live in that namespace, so it
// never touches the host's firewall or the main daemon's chains. It runs
// in a mount namespace of its own too (a sysfs of its network namespace,
// the host's cgroup hierarchy bound into it), with its own socket,
// data-root, exec-root (where it starts its own containerd) and cgroup
// parent, all removed when the test ends.
type Daemon struct {
	Host      string       // DOCKER_HOST value: unix://<dir>/docker.sock
	Netns     string       // the namespace's name under /var/run/netns
	NetnsPath string       // /var/run/netns/<name>
	Gateway   netip.Prefix // docker0's address (--bip), a random 10.214.X.1/24
	HostAddr  netip.Addr   // an address of the namespace's own (on lo), 10.215.X.1
	Log       string       // the daemon's log file

	dir     string
	cgroup  string
	cmd     *exec.Cmd
	waitErr chan error
}

// StartDaemon starts a dockerd with the options given (e.g.
// "--userland-proxy=false") in a new network namespace, waits until it
// answers and loads the test image into it (from the main daemon, see
// RequireDocker). Everything it creates goes when the test ends, also when
// it fails.
func StartDaemon(t testing.TB, opts ...string) *Daemon {
	t.Helper()
	RequireDocker(t)
	for _, tool := range [][2]string{{"dockerd", "docker.io"}, {"ip", "iproute2"}, {"unshare", "util-linux"}, {"nsenter", "util-linux"}} {
		privtest.Tool(t, tool[0], tool[1])
	}
	x := byte(1 + rand.IntN(253))
	suffix := UniqueName("htd")
	d := &Daemon{
		Netns:    suffix,
		Gateway:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 214, x, 1}), 24),
		HostAddr: netip.AddrFrom4([4]byte{10, 215, x, 1}),
		cgroup:   "/hoptrace-" + suffix,
		waitErr:  make(chan error, 1),
	}
	d.NetnsPath = filepath.Join("/var/run/netns", d.Netns)
	dir, err := os.MkdirTemp("", "ht-dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	d.dir = dir
	d.Host = "unix://" + filepath.Join(dir, "docker.sock")
	d.Log = filepath.Join(dir, "dockerd.log")
	t.Cleanup(func() {
		if err := d.stop(); err != nil {
			t.Errorf("second dockerd cleanup: %v", err)
		}
	})
	if err := d.start(opts); err != nil {
		t.Fatalf("second dockerd: %v\n%s", err, d.logTail())
	}
	if out, err := d.pipeImage(); err != nil {
		t.Fatalf("load %s into the second dockerd: %v: %s", Image, err, out)
	}
	return d
}

func (d *Daemon) start(opts []string) error {
	if out, err := exec.Command("ip", "netns", "add", d.Netns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %v: %s", d.Netns, err, out)
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", d.HostAddr.String() + "/32", "dev", "lo"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", d.Netns}, args...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip -n %s %s: %v: %s", d.Netns, strings.Join(args, " "), err, out)
		}
	}
	cfg := filepath.Join(d.dir, "daemon.json")
	if err := os.WriteFile(cfg, []byte("{}\n"), 0o644); err != nil {
		return err
	}
	cg := filepath.Join(d.dir, "cgroup")
	if err := os.Mkdir(cg, 0o755); err != nil {
		return err
	}
	logf, err := os.Create(d.Log)
	if err != nil {
		return err
	}
	defer logf.Close()
	// The mounts happen in the new mount namespace only (propagation
	// slave): the host's cgroup tree is kept aside, a sysfs of the daemon's
	// network namespace replaces /sys (its docker0 is not the host's), and
	// the cgroup tree goes back under it. The daemon's own config file
	// keeps /etc/docker/daemon.json (the main daemon's) out.
	daemon := []string{"dockerd", "--config-file", cfg,
		"--data-root", filepath.Join(d.dir, "data"), "--exec-root", filepath.Join(d.dir, "exec"),
		"--pidfile", filepath.Join(d.dir, "dockerd.pid"), "-H", d.Host,
		"--bip", d.Gateway.String(), "--cgroup-parent", d.cgroup}
	daemon = append(daemon, opts...)
	script := fmt.Sprintf("mount --rbind /sys/fs/cgroup %[1]s && mount -t sysfs sysfs /sys && mount --rbind %[1]s /sys/fs/cgroup && exec \"$@\"", cg)
	d.cmd = exec.Command("unshare", append([]string{"--mount", "--propagation", "slave",
		"nsenter", "--net=" + d.NetnsPath, "sh", "-c", script, "sh"}, daemon...)...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.Env = append(os.Environ(), "DOCKER_HOST=")
	// A test binary killed outright stops its daemon too (the signal
	// survives the execs down to dockerd, which then stops its containers).
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := d.cmd.Start(); err != nil {
		return fmt.Errorf("start dockerd: %w", err)
	}
	go func() { d.waitErr <- d.cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := d.DockerErr("info", "--format", "{{.ServerVersion}}"); err == nil {
			return nil
		}
		select {
		case err := <-d.waitErr:
			d.waitErr <- err
			return fmt.Errorf("dockerd exited: %v", err)
		case <-time.After(300 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("dockerd did not answer within 60 s")
		}
	}
}

// pipeImage copies the test image from the main daemon (docker save | load).
func (d *Daemon) pipeImage() ([]byte, error) {
	save := exec.Command("docker", "save", Image)
	load := exec.Command("docker", "-H", d.Host, "load", "-q")
	pipe, err := save.StdoutPipe()
	if err != nil {
		return nil, err
	}
	load.Stdin = pipe
	var out bytes.Buffer
	load.Stdout, load.Stderr, save.Stderr = &out, &out, &out
	if err := save.Start(); err != nil {
		return nil, err
	}
	err = load.Run()
	if werr := save.Wait(); err == nil {
		err = werr
	}
	return out.Bytes(), err
}

// DockerErr runs the docker CLI against this daemon.
func (d *Daemon) DockerErr(args ...string) (string, error) {
	return dockerCmd(exec.Command("docker", append([]string{"-H", d.Host}, args...)...))
}

// HostVeth names a container's veth peer in the daemon's namespace.
func (d *Daemon) HostVeth(t testing.TB, container string) string {
	t.Helper()
	out, err := d.DockerErr("exec", container, "cat", "/sys/class/net/eth0/iflink")
	if err != nil {
		t.Fatalf("iflink of %s: %v", container, err)
	}
	iflink, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("iflink of %s: %q", container, out)
	}
	ns, err := netns.GetFromPath(d.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByIndex(iflink)
	if err != nil {
		t.Fatalf("veth of %s (ifindex %d in %s): %v", container, iflink, d.Netns, err)
	}
	return l.Attrs().Name
}

func (d *Daemon) logTail() string {
	b, _ := os.ReadFile(d.Log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

// stop removes the daemon's containers, stops it (SIGKILL after 20 s, and
// its containerd with it), and removes its namespace, directory and cgroup
// parent. The mount namespace, and every mount in it, goes with its last
// process.
func (d *Daemon) stop() error {
	var errs []error
	if d.cmd != nil && d.cmd.Process != nil {
		if ids, err := d.DockerErr("ps", "-aq"); err == nil && ids != "" {
			d.DockerErr(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
		}
		containerd := pidFrom(filepath.Join(d.dir, "exec", "containerd", "containerd.pid"))
		// The process is unshare → nsenter → sh, each exec'ing the next:
		// its pid is dockerd's.
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.waitErr:
		case <-time.After(20 * time.Second):
			d.cmd.Process.Kill()
			<-d.waitErr
			errs = append(errs, errors.New("dockerd did not stop within 20 s of SIGTERM: killed"))
		}
		if containerd > 0 && syscall.Kill(containerd, 0) == nil {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", containerd)); strings.TrimSpace(string(comm)) == "containerd" {
				syscall.Kill(containerd, syscall.SIGKILL)
			}
		}
	}
	if _, err := os.Stat(d.NetnsPath); err == nil {
		if out, err := exec.Command("ip", "netns", "del", d.Netns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", d.Netns, err, out))
		}
	}
	// runc removes each container's cgroup; the parent is the test's.
	if dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + d.cgroup); len(dirs) > 0 {
		for _, dir := range dirs {
			os.Remove(dir)
		}
	}
	if err := os.Remove("/sys/fs/cgroup" + d.cgroup); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if d.dir != "" {
		if err := os.RemoveAll(d.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func pidFrom(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}
