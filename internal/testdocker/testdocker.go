// Package testdocker helps tests that need a real Docker daemon: it checks
// that one answers, builds the busybox test image, and runs containers and
// networks that are removed when the test ends.
//
// Tests that use it skip (loudly) when not run as root, and FAIL when run
// as root without a reachable daemon: CI always has one (see
// scripts/start-dockerd.sh).
package testdocker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/tracer/runtime/docker"
)

// Image is the test image, built by scripts/docker-test-image.sh.
const Image = "hoptrace-test/busybox:latest"

var imageOnce sync.Once
var imageErr error

// RequireDocker skips the test when not root and fails it when no Docker
// daemon answers; it makes sure the test image exists.
func RequireDocker(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: Docker tests need root (run go test as root; CI does)")
	}
	if os.Getenv("HOPTRACE_VM") != "" {
		t.Skip("SKIP: no Docker daemon inside the kernel-matrix VM")
	}
	if _, err := exec.LookPath("docker"); err != nil {
		t.Fatalf("docker CLI not found: %v (install docker.io; CI must have it)", err)
	}
	out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput()
	if err != nil {
		t.Fatalf("no Docker daemon answers (DOCKER_HOST=%q): %v: %s\nstart one with scripts/start-dockerd.sh",
			os.Getenv("DOCKER_HOST"), err, bytes.TrimSpace(out))
	}
	imageOnce.Do(func() { imageErr = ensureImage() })
	if imageErr != nil {
		t.Fatalf("test image %s: %v", Image, imageErr)
	}
}

func ensureImage() error {
	if exec.Command("docker", "image", "inspect", Image).Run() == nil {
		return nil
	}
	script, err := findScript("scripts/docker-test-image.sh")
	if err != nil {
		return err
	}
	out, err := exec.Command("bash", script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", script, err, out)
	}
	return nil
}

// findScript looks for rel in the module root (the directory with go.mod
// above the test's working directory).
func findScript(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, rel), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory to find %s", rel)
		}
		dir = parent
	}
}

// Runtime requires Docker (see RequireDocker) and returns hoptrace's
// client for it, closed when the test ends.
func Runtime(t testing.TB) *docker.Runtime {
	t.Helper()
	RequireDocker(t)
	rt, err := docker.New(context.Background())
	if err != nil {
		t.Fatalf("docker.New: %v", err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// UniqueName returns prefix followed by a random suffix.
func UniqueName(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// Docker runs the docker CLI and fails the test on error; it returns the
// trimmed standard output.
func Docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := DockerErr(args...)
	if err != nil {
		t.Fatalf("docker %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// DockerErr runs the docker CLI; the error includes standard error.
func DockerErr(args ...string) (string, error) {
	return dockerCmd(exec.Command("docker", args...))
}

func dockerCmd(cmd *exec.Cmd) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(stdout.String()), fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Container is a container a test started.
type Container struct {
	Name string
	ID   string
}

// Run starts a container named prefix-<random> from the test image running
// `sleep 3600`; args are `docker run` options placed before the image
// (e.g. "--network", "none"). It is removed (forcibly) when the test ends.
func Run(t testing.TB, prefix string, args ...string) Container {
	t.Helper()
	return RunCmd(t, prefix, args, "sleep", "3600")
}

// RunCmd is Run with a command of the caller's choosing.
func RunCmd(t testing.TB, prefix string, opts []string, cmd ...string) Container {
	t.Helper()
	name := UniqueName(prefix)
	a := append([]string{"run", "-d", "--name", name, "--label", "hoptrace-test=1"}, opts...)
	a = append(a, Image)
	a = append(a, cmd...)
	t.Cleanup(func() { DockerErr("rm", "-f", name) })
	id := Docker(t, a...)
	return Container{Name: name, ID: id}
}

// Create creates (without starting) a container from the test image, removed
// when the test ends.
func Create(t testing.TB, prefix string, args ...string) Container {
	t.Helper()
	name := UniqueName(prefix)
	a := append([]string{"create", "--name", name, "--label", "hoptrace-test=1"}, args...)
	a = append(a, Image, "sleep", "3600")
	t.Cleanup(func() { DockerErr("rm", "-f", name) })
	id := Docker(t, a...)
	return Container{Name: name, ID: id}
}

// Network creates a network named prefix-<random> (options as for
// `docker network create`, e.g. "-o", "com.docker.network.bridge.name=x"),
// removed when the test ends (after the containers started later, since
// cleanups run last-in first-out). It returns the name and the ID.
func Network(t testing.TB, prefix string, args ...string) (name, id string) {
	t.Helper()
	name = UniqueName(prefix)
	a := append([]string{"network", "create", "--label", "hoptrace-test=1"}, args...)
	a = append(a, name)
	t.Cleanup(func() {
		// Containers still attached make rm fail; retry briefly.
		for i := 0; i < 10; i++ {
			if _, err := DockerErr("network", "rm", name); err == nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	id = Docker(t, a...)
	return name, id
}

// Exec runs a command in the container and returns its trimmed output.
func Exec(t testing.TB, container string, cmd ...string) string {
	t.Helper()
	return Docker(t, append([]string{"exec", container}, cmd...)...)
}

// Inspect returns `docker inspect` of one object, decoded.
func Inspect(t testing.TB, ref string) map[string]any {
	t.Helper()
	out := Docker(t, "inspect", ref)
	var v []map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil || len(v) != 1 {
		t.Fatalf("docker inspect %s: %v (%d objects)", ref, err, len(v))
	}
	return v[0]
}

// Field walks a decoded JSON object by keys, e.g. Field(m, "State", "Pid").
func Field(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

// String is Field formatted as a string ("" when absent); numbers print
// without a fraction.
func String(m map[string]any, keys ...string) string {
	switch v := Field(m, keys...).(type) {
	case nil:
		return ""
	case string:
		return v
	case float64:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprint(v)
	}
}
