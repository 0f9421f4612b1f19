package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"
)

// Workloads run from namespace A (client) to namespace B (server), through
// A's veth pair, the bridge and B's veth pair.

const (
	iperfPort = 5201
	rrPort    = 7001
)

// Servers are the long-lived servers in namespace B.
type Servers struct {
	iperf *Proc
	rr    *Proc
}

func startServers(ctx context.Context, nt *Net) (*Servers, error) {
	b := nt.Hosts[1]
	s := &Servers{}
	var err error
	s.iperf, err = StartProc("iperf3 server", []string{"ip", "netns", "exec", b.Name, "iperf3", "-s", "-p", strconv.Itoa(iperfPort)}, nil, nil, 0)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		s.Close()
		return nil, err
	}
	var out syncBuffer
	s.rr, err = StartProc("rr server", []string{"ip", "netns", "exec", b.Name, self, "rr-server", "-port", strconv.Itoa(rrPort)}, &out, nil, 0)
	if err != nil {
		s.Close()
		return nil, err
	}
	for i := 0; ; i++ {
		if bytes.Contains(out.Bytes(), []byte("ready")) {
			break
		}
		if i > 200 {
			s.Close()
			return nil, fmt.Errorf("rr server not ready: %s", s.rr.Stderr())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // iperf3 -s binds quickly; leave it the time
	return s, nil
}

func (s *Servers) Close() {
	if s.iperf != nil {
		s.iperf.Kill()
	}
	if s.rr != nil {
		s.rr.Kill()
	}
}

type iperfEnd struct {
	End struct {
		SumSent struct {
			Seconds     float64 `json:"seconds"`
			Bytes       float64 `json:"bytes"`
			BitsPerSec  float64 `json:"bits_per_second"`
			Packets     float64 `json:"packets"`
			LostPackets float64 `json:"lost_packets"`
		} `json:"sum_sent"`
		SumReceived struct {
			Seconds     float64 `json:"seconds"`
			Bytes       float64 `json:"bytes"`
			BitsPerSec  float64 `json:"bits_per_second"`
			Packets     float64 `json:"packets"`
			LostPackets float64 `json:"lost_packets"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

func runIperf(ctx context.Context, nt *Net, extra ...string) (iperfEnd, error) {
	var r iperfEnd
	a, b := nt.Hosts[0], nt.Hosts[1]
	args := append([]string{"netns", "exec", a.Name, "iperf3", "-c", b.Addr.Addr().String(), "-p", strconv.Itoa(iperfPort), "-J"}, extra...)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // "server is busy" right after the previous test
		out, err := exec.CommandContext(ctx, "ip", args...).Output()
		jerr := json.Unmarshal(out, &r)
		if err == nil && jerr == nil && r.Error == "" {
			return r, nil
		}
		lastErr = fmt.Errorf("iperf3 %v: %v %v %s", extra, err, jerr, r.Error)
		time.Sleep(300 * time.Millisecond)
	}
	return r, lastErr
}

// tcpStream returns the TCP throughput in Gbit/s.
func tcpStream(ctx context.Context, nt *Net, dur time.Duration) (map[string]float64, error) {
	r, err := runIperf(ctx, nt, "-t", secs(dur))
	if err != nil {
		return nil, err
	}
	return map[string]float64{"gbps": r.End.SumReceived.BitsPerSec / 1e9}, nil
}

// udp64 sends 64-byte UDP payloads at rate bits/s ("0": unlimited) and
// returns the packets per second the receiver got and the sender sent.
func udp64(ctx context.Context, nt *Net, dur time.Duration, rate string) (map[string]float64, error) {
	r, err := runIperf(ctx, nt, "-u", "-l", "64", "-b", rate, "-t", secs(dur))
	if err != nil {
		return nil, err
	}
	rx := r.End.SumReceived
	if rx.Seconds == 0 {
		return nil, fmt.Errorf("iperf3 udp: no receiver summary")
	}
	return map[string]float64{
		"rx_pps":     (rx.Packets - rx.LostPackets) / rx.Seconds,
		"tx_pps":     rx.Packets / rx.Seconds,
		"rx_packets": rx.Packets - rx.LostPackets,
		"tx_packets": rx.Packets,
	}, nil
}

// tcpRR runs the request/response client in namespace A.
func tcpRR(ctx context.Context, nt *Net, dur time.Duration) (map[string]float64, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	a, b := nt.Hosts[0], nt.Hosts[1]
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", a.Name, self, "rr-client",
		"-addr", b.Addr.Addr().String(), "-port", strconv.Itoa(rrPort), "-duration", dur.String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("rr-client: %v: %s", err, stderr.String())
	}
	var r RRResult
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("rr-client output: %v: %q", err, out)
	}
	return map[string]float64{"tps": r.TPS, "p50_us": r.P50us, "p90_us": r.P90us, "p99_us": r.P99us, "transactions": float64(r.Transactions)}, nil
}

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }
