package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// The TCP request/response workload: one connection, one byte each way per
// transaction, the next request sent when the response arrived (netperf
// TCP_RR). Both ends use blocking system calls on a locked thread, so the
// Go scheduler adds no wake-up latency of its own.

// RRResult is what rr-client prints (one JSON object).
type RRResult struct {
	Transactions int     `json:"transactions"`
	Seconds      float64 `json:"seconds"`
	TPS          float64 `json:"tps"`
	P50us        float64 `json:"p50_us"`
	P90us        float64 `json:"p90_us"`
	P99us        float64 `json:"p99_us"`
	MeanUs       float64 `json:"mean_us"`
}

// rrServer serves request/response connections until killed. It runs inside
// a namespace (ip netns exec) and prints "ready" once listening.
func rrServer(args []string) error {
	fs := flag.NewFlagSet("rr-server", flag.ExitOnError)
	port := fs.Int("port", 7001, "TCP port")
	fs.Parse(args)
	runtime.LockOSThread()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: *port}); err != nil {
		return fmt.Errorf("bind :%d: %w", *port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		_ = unix.SetsockoptInt(c, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		go func() {
			runtime.LockOSThread()
			defer unix.Close(c)
			buf := make([]byte, 1)
			for {
				n, err := unix.Read(c, buf)
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if err != nil || n == 0 {
					return
				}
				if _, err := unix.Write(c, buf); err != nil {
					return
				}
			}
		}()
	}
}

// rrClient runs transactions for -warmup then measures for -duration and
// prints an RRResult.
func rrClient(args []string) error {
	fs := flag.NewFlagSet("rr-client", flag.ExitOnError)
	addr := fs.String("addr", "", "server IPv4 address")
	port := fs.Int("port", 7001, "server TCP port")
	dur := fs.Duration("duration", 2*time.Second, "measured time")
	warm := fs.Duration("warmup", 200*time.Millisecond, "unmeasured time first")
	fs.Parse(args)
	a, err := netip.ParseAddr(*addr)
	if err != nil || !a.Is4() {
		return fmt.Errorf("rr-client: -addr must be an IPv4 address")
	}
	runtime.LockOSThread()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	var err2 error
	for i := 0; i < 50; i++ { // the server may still be starting
		if err2 = unix.Connect(fd, &unix.SockaddrInet4{Port: *port, Addr: a.As4()}); err2 == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err2 != nil {
		return fmt.Errorf("connect %s:%d: %w", a, *port, err2)
	}
	lat := make([]int64, 0, 1<<21)
	buf := []byte{'x'}
	start := time.Now()
	measure := start.Add(*warm)
	end := measure.Add(*dur)
	var first, last time.Time
	for {
		t0 := time.Now()
		if _, err := unix.Write(fd, buf); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		for {
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read: %w", err)
			}
			if n == 0 {
				return errors.New("server closed the connection")
			}
			break
		}
		t1 := time.Now()
		if t0.After(measure) {
			if first.IsZero() {
				first = t0
			}
			last = t1
			if len(lat) < cap(lat) {
				lat = append(lat, int64(t1.Sub(t0)))
			}
		}
		if t1.After(end) {
			break
		}
	}
	if len(lat) == 0 {
		return errors.New("no transaction measured")
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e3 }
	var sum int64
	for _, v := range lat {
		sum += v
	}
	secs := last.Sub(first).Seconds()
	res := RRResult{
		Transactions: len(lat), Seconds: secs, TPS: float64(len(lat)) / secs,
		P50us: pct(0.50), P90us: pct(0.90), P99us: pct(0.99), MeanUs: float64(sum) / float64(len(lat)) / 1e3,
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
