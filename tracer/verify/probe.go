package verify

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/tracer/nftrace"
	"github.com/hoptrace/hoptrace/tracer/nsenter"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// probePayload marks probe packets (UDP payload, ICMP echo data).
const probePayload = "hoptrace-verify-probe"

// socketIn creates a socket inside the namespace, bound to src:0, and
// returns it with the local port the kernel chose.
func socketIn(nsPath string, typ, proto int, src netip.Addr) (fd int, port int, err error) {
	err = nsenter.Do(nsPath, func() error {
		var e error
		fd, e = unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
		return e
	})
	if err != nil {
		return -1, 0, fmt.Errorf("socket in the container's namespace: %w", err)
	}
	sa := &unix.SockaddrInet4{Addr: src.As4()}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("bind %s: %w", src, err)
	}
	if typ != unix.SOCK_RAW {
		got, err := unix.Getsockname(fd)
		if err != nil {
			unix.Close(fd)
			return -1, 0, err
		}
		if in, ok := got.(*unix.SockaddrInet4); ok {
			port = in.Port
		}
	}
	return fd, port, nil
}

// waitFd polls fd for events until deadline; false on timeout.
func waitFd(fd int, events int16, deadline time.Time) (bool, error) {
	for {
		ms := int(time.Until(deadline) / time.Millisecond)
		if ms <= 0 {
			return false, nil
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(pfd, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, err
		}
		return n > 0, nil
	}
}

// response is what came back to one probe's socket.
type response struct {
	what     string // words
	accepted bool   // echo reply, answer, connection established
	refused  bool   // ICMP port unreachable (ECONNREFUSED) or RST
	rtt      time.Duration
}

// sender sends the probes of one verification.
type sender struct {
	nsPath   string
	src, dst netip.Addr
	proto    string
	port     int
	icmpID   uint16
}

func randUint16() uint16 {
	var b [2]byte
	crand.Read(b[:])
	return binary.BigEndian.Uint16(b[:])
}

// send sends probe seq and waits for its response until deadline. It fills
// the probe's identity (sport / ICMP id) before the packet leaves, through
// ident, so that its path can be recognised.
func (s *sender) send(seq int, deadline time.Time, ident func(sport int)) (response, error) {
	switch s.proto {
	case "icmp":
		return s.icmp(seq, deadline, ident)
	case "udp":
		return s.udp(deadline, ident)
	case "tcp":
		return s.tcp(deadline, ident)
	}
	return response{}, fmt.Errorf("unknown protocol %s", s.proto)
}

func (s *sender) icmp(seq int, deadline time.Time, ident func(int)) (response, error) {
	fd, _, err := socketIn(s.nsPath, unix.SOCK_RAW, unix.IPPROTO_ICMP, s.src)
	if err != nil {
		return response{}, err
	}
	defer unix.Close(fd)
	ident(0)
	msg := echoRequest(s.icmpID, uint16(seq), []byte(probePayload))
	start := time.Now()
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrInet4{Addr: s.dst.As4()}); err != nil {
		return response{}, fmt.Errorf("send echo request: %w", err)
	}
	buf := make([]byte, 1500)
	for {
		ok, err := waitFd(fd, unix.POLLIN, deadline)
		if err != nil || !ok {
			return response{what: "no echo reply"}, err
		}
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return response{what: "no echo reply"}, err
		}
		in, _ := from.(*unix.SockaddrInet4)
		b := buf[:n]
		if n < 20 {
			continue
		}
		ihl := int(b[0]&0x0f) * 4
		if len(b) < ihl+8 {
			continue
		}
		icmp := b[ihl:]
		switch icmp[0] {
		case 0: // echo reply
			if in == nil || netip.AddrFrom4(in.Addr) != s.dst {
				continue
			}
			if binary.BigEndian.Uint16(icmp[4:]) == s.icmpID && binary.BigEndian.Uint16(icmp[6:]) == uint16(seq) {
				rtt := time.Since(start)
				return response{what: fmt.Sprintf("echo reply from %s in %s", s.dst, rtt.Round(time.Microsecond)), accepted: true, rtt: rtt}, nil
			}
		case 3: // unreachable about our request?
			if len(icmp) >= 8+20+8 {
				inner := icmp[8:]
				iihl := int(inner[0]&0x0f) * 4
				if len(inner) >= iihl+8 && inner[9] == unix.IPPROTO_ICMP &&
					binary.BigEndian.Uint16(inner[iihl+4:]) == s.icmpID && binary.BigEndian.Uint16(inner[iihl+6:]) == uint16(seq) {
					return response{what: fmt.Sprintf("ICMP unreachable (code %d) from %s", icmp[1], netip.AddrFrom4(in.Addr))}, nil
				}
			}
		}
	}
}

func (s *sender) udp(deadline time.Time, ident func(int)) (response, error) {
	fd, sport, err := socketIn(s.nsPath, unix.SOCK_DGRAM, unix.IPPROTO_UDP, s.src)
	if err != nil {
		return response{}, err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: s.dst.As4(), Port: s.port}); err != nil {
		return response{}, fmt.Errorf("connect udp %s:%d: %w", s.dst, s.port, err)
	}
	ident(sport)
	start := time.Now()
	if _, err := unix.Write(fd, []byte(probePayload)); err != nil {
		return response{}, fmt.Errorf("send udp: %w", err)
	}
	buf := make([]byte, 1500)
	for {
		ok, err := waitFd(fd, unix.POLLIN, deadline)
		if err != nil || !ok {
			return response{what: "no answer (UDP is silent when a listener does not reply)"}, err
		}
		_, err = unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.ECONNREFUSED):
			rtt := time.Since(start)
			return response{what: fmt.Sprintf("ICMP port unreachable from %s in %s", s.dst, rtt.Round(time.Microsecond)), refused: true, rtt: rtt}, nil
		case err != nil:
			return response{what: err.Error()}, nil
		}
		rtt := time.Since(start)
		return response{what: fmt.Sprintf("answered by %s:%d in %s", s.dst, s.port, rtt.Round(time.Microsecond)), accepted: true, rtt: rtt}, nil
	}
}

func (s *sender) tcp(deadline time.Time, ident func(int)) (response, error) {
	fd, sport, err := socketIn(s.nsPath, unix.SOCK_STREAM, unix.IPPROTO_TCP, s.src)
	if err != nil {
		return response{}, err
	}
	defer unix.Close(fd)
	// Close with a reset: no FIN exchange, no TIME_WAIT left behind.
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	ident(sport)
	start := time.Now()
	err = unix.Connect(fd, &unix.SockaddrInet4{Addr: s.dst.As4(), Port: s.port})
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		if errors.Is(err, unix.ECONNREFUSED) {
			return response{what: "connection refused (RST)", refused: true, rtt: time.Since(start)}, nil
		}
		return response{}, fmt.Errorf("connect tcp %s:%d: %w", s.dst, s.port, err)
	}
	ok, err := waitFd(fd, unix.POLLOUT, deadline)
	if err != nil {
		return response{}, err
	}
	if !ok {
		return response{what: "no SYN-ACK or RST before the timeout"}, nil
	}
	rtt := time.Since(start)
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return response{}, err
	}
	switch unix.Errno(soerr) {
	case 0:
		return response{what: fmt.Sprintf("connection accepted by %s:%d in %s", s.dst, s.port, rtt.Round(time.Microsecond)), accepted: true, rtt: rtt}, nil
	case unix.ECONNREFUSED:
		return response{what: fmt.Sprintf("connection refused (RST from %s) in %s", s.dst, rtt.Round(time.Microsecond)), refused: true, rtt: rtt}, nil
	default:
		return response{what: unix.Errno(soerr).Error()}, nil
	}
}

// echoRequest builds an ICMPv4 echo request.
func echoRequest(id, seq uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	b[0] = 8
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], payload)
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(b[2:], ^uint16(sum))
	return b
}

// probeState is one probe while it is in flight.
type probeState struct {
	seq    int
	sport  int
	sent   bool
	resp   *response
	err    error
	path   *path.Path
	reply  *path.Path
	replyW bool // a reply path is expected
}

// matcher recognises the paths of one verification's probes.
type matcher struct {
	proto    string
	src, dst string
	port     int
	icmpID   uint16

	mu     sync.Mutex
	probes []*probeState
}

func (m *matcher) take(p path.Path) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fwd := p.Src == m.src && p.Dst == m.dst
	back := p.Src == m.dst && p.Dst == m.src
	if !fwd && !back {
		return
	}
	for _, ps := range m.probes {
		switch {
		case m.proto == "icmp" && p.Proto == "ICMP":
			if fwd && ps.path == nil && strings.Contains(p.Summary, fmt.Sprintf("echo request id=%d seq=%d ", m.icmpID, ps.seq)) {
				ps.path = &p
				return
			}
			if back && ps.reply == nil && strings.Contains(p.Summary, fmt.Sprintf("echo reply id=%d seq=%d ", m.icmpID, ps.seq)) {
				ps.reply = &p
				return
			}
		case m.proto == "udp" && p.Proto == "UDP":
			if fwd && ps.sport != 0 && ps.path == nil && int(p.Sport) == ps.sport && int(p.Dport) == m.port {
				ps.path = &p
				return
			}
		case m.proto == "tcp" && p.Proto == "TCP":
			if fwd && ps.sport != 0 && ps.path == nil && int(p.Sport) == ps.sport && int(p.Dport) == m.port && strings.Contains(p.Summary, "[S]") {
				ps.path = &p
				return
			}
			if back && ps.sport != 0 && ps.reply == nil && int(p.Dport) == ps.sport && int(p.Sport) == m.port {
				ps.reply = &p
				return
			}
		}
	}
}

// complete reports whether every probe has its response and its path
// (and the reply path when one is expected).
func (m *matcher) complete() (all bool, paths bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	all, paths = true, true
	for _, ps := range m.probes {
		if !ps.sent {
			continue
		}
		if ps.path == nil {
			paths = false
		}
		if ps.resp == nil && ps.err == nil {
			all = false
		}
		if ps.replyW && ps.reply == nil {
			all = false
		}
	}
	return all && paths, paths
}

// probe sends the probes of a planned verification, traces them and
// judges the paths against the expected hops.
func (v *Verifier) probe(ctx context.Context, sess *session, p *plan, opts Options) {
	r := p.report
	host := v.Names.HostInode()
	for i := range r.Expected {
		if r.Expected[i].Netns == "host" {
			r.Expected[i].NetnsInode = host
		}
	}
	snd := &sender{nsPath: p.src.NetnsPath, src: p.srcIP, dst: p.dstIP, proto: opts.Proto, port: opts.Port, icmpID: randUint16()}
	m := &matcher{proto: opts.Proto, src: p.srcIP.String(), dst: p.dstIP.String(), port: opts.Port, icmpID: snd.icmpID}
	for i := 0; i < opts.Count; i++ {
		m.probes = append(m.probes, &probeState{seq: i + 1})
	}
	unsub := sess.subscribe(m.take)
	defer unsub()
	if sess.rules != nil {
		unmark, err := sess.rules.Probe(nftrace.ProbeMatch{Src: p.srcIP, Dst: p.dstIP, Proto: opts.Proto, Port: uint16(opts.Port), ICMPID: snd.icmpID})
		if err != nil && v.Warn != nil {
			v.Warn("probe packets not marked for rule naming: " + err.Error())
		} else if err == nil {
			defer unmark()
		}
	}

	deadline := time.Now().Add(opts.Timeout)
	var wg sync.WaitGroup
	for i, ps := range m.probes {
		if i > 0 {
			select {
			case <-time.After(opts.Interval):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		respDeadline := time.Now().Add(min(2*time.Second, opts.Timeout))
		if respDeadline.After(deadline) {
			respDeadline = deadline
		}
		wg.Add(1)
		ps := ps
		sent := make(chan struct{})
		go func() {
			defer wg.Done()
			resp, err := snd.send(ps.seq, respDeadline, func(sport int) {
				m.mu.Lock()
				ps.sport, ps.sent = sport, true
				m.mu.Unlock()
				close(sent)
			})
			m.mu.Lock()
			if err != nil {
				ps.err = err
				if !ps.sent {
					ps.sent = true
					close(sent)
				}
			} else {
				ps.resp = &resp
				ps.replyW = resp.accepted || (resp.refused && opts.Proto == "tcp")
			}
			m.mu.Unlock()
		}()
		<-sent
	}
	// Paths are finished by the tracer ~50ms after their end event or
	// 300ms after their last event: wait for all of them, or the deadline.
	for time.Now().Before(deadline) && ctx.Err() == nil && sess.alive() == nil {
		if all, _ := m.complete(); all {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()

	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ps := range m.probes {
		pr := Probe{Seq: ps.seq, Sport: ps.sport, Hops: []ObservedHop{}}
		if opts.Proto == "icmp" {
			pr.IcmpID = int(snd.icmpID)
		}
		pr.Summary = probeSummary(opts.Proto, p.srcIP, p.dstIP, ps.sport, opts.Port, snd.icmpID, ps.seq)
		if ps.err != nil {
			pr.SendError = ps.err.Error()
		}
		if ps.resp != nil {
			pr.Response = ps.resp.what
			pr.RTTNs = ps.resp.rtt.Nanoseconds()
		}
		pr.Path, pr.Reply = ps.path, ps.reply
		j := judge(r.Expected, ps.path)
		pr.Hops, pr.Matched, pr.PathOK, pr.Failure, pr.Outcome = j.hops, j.matched, j.ok, j.failure, j.outcome
		if pr.Failure != nil {
			pr.Failure.Probe = ps.seq
			if pr.SendError != "" && ps.path == nil {
				pr.Failure.Reason += " (" + pr.SendError + ")"
			}
		}
		if pr.PathOK && ps.resp != nil {
			switch {
			case pr.Outcome == OutcomeAccepted && ps.resp.refused:
				pr.Outcome = OutcomeRefused
			case pr.Outcome == OutcomeAccepted && !ps.resp.accepted && opts.Proto != "udp":
				pr.Outcome = OutcomeNoResponse
			case pr.Outcome == OutcomeAccepted && !ps.resp.accepted && opts.Proto == "udp":
				// A datagram reached a socket; UDP owes no answer.
			}
		}
		r.Probes = append(r.Probes, pr)
	}
	if err := sess.alive(); err != nil {
		r.fail(Failure{Stage: StagePath, Hop: "tracer", Reason: "the trace stopped: " + err.Error()})
		return
	}
	conclude(r, opts)
}

func probeSummary(proto string, src, dst netip.Addr, sport, port int, id uint16, seq int) string {
	switch proto {
	case "icmp":
		return fmt.Sprintf("ICMP %s > %s echo request id=%d seq=%d", src, dst, id, seq)
	case "udp":
		return fmt.Sprintf("UDP %s > %s", netip.AddrPortFrom(src, uint16(sport)), netip.AddrPortFrom(dst, uint16(port)))
	}
	return fmt.Sprintf("TCP %s > %s [S]", netip.AddrPortFrom(src, uint16(sport)), netip.AddrPortFrom(dst, uint16(port)))
}
