package resolve

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

func TestParseNsLink(t *testing.T) {
	for in, want := range map[string]uint32{"net:[4026531840]": 4026531840, "net:[1]": 1} {
		if got, ok := parseNsLink(in); !ok || got != want {
			t.Errorf("parseNsLink(%q) = %d %v, want %d", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "uts:[4026531838]", "net:[x]", "net:[4026531840", "net:[99999999999]", "net:4026531840"} {
		if got, ok := parseNsLink(in); ok {
			t.Errorf("parseNsLink(%q) = %d, want failure", in, got)
		}
	}
}

func TestProcPid(t *testing.T) {
	for in, want := range map[string]int{
		"/proc/123/ns/net":          123,
		"/proc/123/ns/net/":         123,
		"/proc/1/task/77/ns/net":    77,
		"/proc/self/ns/net":         0,
		"/var/run/netns/a":          0,
		"/proc/123/ns":              0,
		"/proc/0/ns/net":            0,
		"/host/proc/123/ns/net":     0,
		"/proc/123/something/ns/x":  0,
		"/proc/123/task/x/ns/net":   0,
		"/proc/12a/ns/net":          0,
		"/proc/123/task/9/ns/netns": 0,
	} {
		if got := procPid(in); got != want {
			t.Errorf("procPid(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestClassifyPath(t *testing.T) {
	cases := []struct {
		path  string
		src   source
		label string
	}{
		{"/var/run/netns/blue", srcNamed, "blue"},
		{"/run/netns/blue", srcNamed, "blue"},
		{"/var/run/docker/netns/1a2b3c4d5e6f", srcDocker, "docker:1a2b3c4d5e6f"},
		{"/run/docker/netns/default", srcDocker, "docker:default"},
		{"/proc/42/ns/net", srcProc, ""},
		{"/tmp/x/../ns", srcExplicit, "/tmp/ns"},
		{"/var/run/netns/sub/x", srcExplicit, "/var/run/netns/sub/x"},
	}
	for _, c := range cases {
		if src, label := classifyPath(c.path, NamedNetnsDir, DockerNetnsDir); src != c.src || label != c.label {
			t.Errorf("classifyPath(%q) = %v %q, want %v %q", c.path, src, label, c.src, c.label)
		}
	}
}

func TestScanResultPrefersBetterSource(t *testing.T) {
	s := &scanResult{byInode: map[uint32]candidate{}}
	s.add(candidate{inode: 7, src: srcProc, pid: 50, path: "/proc/50/ns/net"})
	s.add(candidate{inode: 7, src: srcProc, pid: 40, path: "/proc/40/ns/net"})
	if got := s.byInode[7]; got.pid != 40 {
		t.Errorf("lower pid not preferred: %+v", got)
	}
	s.add(candidate{inode: 7, src: srcDocker, label: "docker:abc"})
	s.add(candidate{inode: 7, src: srcProc, pid: 1})
	if got := s.byInode[7]; got.src != srcDocker {
		t.Errorf("docker not preferred over proc: %+v", got)
	}
	s.add(candidate{inode: 7, src: srcNamed, label: "blue"})
	s.add(candidate{inode: 7, src: srcNamed, label: "green"})
	if got := s.byInode[7]; got.src != srcNamed || got.label != "blue" {
		t.Errorf("first named not kept: %+v", got)
	}
	s.add(candidate{inode: 7, src: srcHost, label: "host"})
	if got := s.byInode[7]; got.label != "host" {
		t.Errorf("host not preferred: %+v", got)
	}
}

func TestPortStateName(t *testing.T) {
	for in, want := range map[int]string{-1: "", 0: "disabled", 1: "listening", 2: "learning", 3: "forwarding", 4: "blocking", 9: "state9"} {
		if got := portStateName(in); got != want {
			t.Errorf("portStateName(%d) = %q, want %q", in, got, want)
		}
	}
}

// linkMsg builds an RTM_NEWLINK payload, optionally as a bridge port in
// the given STP state.
func linkMsg(index int, name, slaveKind string, state int) []byte {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	b := msg.Serialize()
	b = append(b, nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)).Serialize()...)
	if slaveKind != "" {
		info := nl.NewRtAttr(unix.IFLA_LINKINFO|unix.NLA_F_NESTED, nil)
		info.AddRtAttr(nl.IFLA_INFO_KIND, nl.ZeroTerminated("veth"))
		info.AddRtAttr(nl.IFLA_INFO_SLAVE_KIND, nl.ZeroTerminated(slaveKind))
		data := info.AddRtAttr(nl.IFLA_INFO_SLAVE_DATA, nil)
		data.AddRtAttr(nl.IFLA_BRPORT_PRIORITY, nl.Uint16Attr(32))
		if state >= 0 {
			data.AddRtAttr(nl.IFLA_BRPORT_STATE, []byte{byte(state)})
		}
		b = append(b, info.Serialize()...)
	}
	return b
}

func TestBridgePortState(t *testing.T) {
	if got := bridgePortState(linkMsg(5, "veth1", "bridge", 3)); got != 3 {
		t.Errorf("bridge port forwarding: %d", got)
	}
	if got := bridgePortState(linkMsg(5, "veth1", "bridge", 4)); got != 4 {
		t.Errorf("bridge port blocking: %d", got)
	}
	if got := bridgePortState(linkMsg(5, "veth1", "bond", 3)); got != -1 {
		t.Errorf("bond slave: %d, want -1", got)
	}
	if got := bridgePortState(linkMsg(5, "veth1", "", 0)); got != -1 {
		t.Errorf("no master: %d, want -1", got)
	}
	if got := bridgePortState(linkMsg(5, "veth1", "bridge", -1)); got != -1 {
		t.Errorf("no state attribute: %d, want -1", got)
	}
	if got := bridgePortState([]byte{1, 2}); got != -1 {
		t.Errorf("short message: %d", got)
	}
	// The same message parses as a link for the netlink package too.
	l, err := netlink.LinkDeserialize(nil, linkMsg(5, "veth1", "bridge", 3))
	if err != nil || l.Attrs().Name != "veth1" || l.Attrs().Index != 5 {
		t.Errorf("LinkDeserialize: %v %+v", err, l)
	}
}

func TestBuildLinks(t *testing.T) {
	const self, other uint32 = 100, 200
	mac, _ := net.ParseMAC("02:00:00:00:00:05")
	attrs := func(idx int, name string, master, parent, nsid int, flags uint32) netlink.LinkAttrs {
		return netlink.LinkAttrs{Index: idx, Name: name, MasterIndex: master, ParentIndex: parent, NetNsID: nsid, RawFlags: flags, MTU: 1500, HardwareAddr: mac}
	}
	raws := []rawLink{
		{link: &netlink.Device{LinkAttrs: attrs(1, "lo", 0, 0, -1, unix.IFF_UP|unix.IFF_RUNNING)}, portState: -1},
		{link: &netlink.Bridge{LinkAttrs: attrs(3, "br0", 0, 0, -1, unix.IFF_UP)}, portState: -1},
		{link: &netlink.Veth{LinkAttrs: attrs(5, "vhost", 3, 9, 2, unix.IFF_UP|unix.IFF_RUNNING)}, portState: 3},
		{link: &netlink.Veth{LinkAttrs: attrs(6, "va", 0, 7, -1, 0)}, portState: -1},
		{link: &netlink.Veth{LinkAttrs: attrs(8, "vlost", 42, 10, 4, 0)}, portState: -1},
	}
	addrs := []netlink.Addr{
		{IPNet: &net.IPNet{IP: net.IPv4(10, 0, 0, 1), Mask: net.CIDRMask(24, 32)}, LinkIndex: 3},
		{IPNet: &net.IPNet{IP: net.ParseIP("fe80::1"), Mask: net.CIDRMask(64, 128)}, LinkIndex: 3},
		{IPNet: &net.IPNet{IP: net.IPv4(10, 9, 9, 9), Mask: net.CIDRMask(32, 32)}, LinkIndex: 77},
		{LinkIndex: 3},
	}
	var asked []int
	links, names, unresolved := buildLinks(self, raws, addrs, func(nsid int) (uint32, bool) {
		asked = append(asked, nsid)
		if nsid == 2 {
			return other, true
		}
		return 0, false
	})
	if !unresolved {
		t.Error("veth with unknown nsid not reported as unresolved")
	}
	if !slices.Equal(asked, []int{2, 4}) {
		t.Errorf("nsids asked %v, want [2 4]", asked)
	}
	if len(links) != 5 || len(names) != 5 || names["vhost"] != 5 {
		t.Fatalf("links %d names %v", len(links), names)
	}
	lo := links[1]
	if lo.Kind != "device" || !lo.Up || !lo.Running || lo.Netns != self {
		t.Errorf("lo: %+v", lo)
	}
	br := links[3]
	if !br.IsBridge() || !br.Up || br.Running || !slices.Equal(addrStrings(br.Addrs), []string{"10.0.0.1/24", "fe80::1/64"}) {
		t.Errorf("br0: %+v", br)
	}
	vh := links[5]
	if vh.Kind != "veth" || vh.MasterIndex != 3 || vh.MasterName != "br0" || vh.PortState != "forwarding" ||
		vh.PeerIndex != 9 || vh.PeerNetns != other || vh.MAC != "02:00:00:00:00:05" || vh.MTU != 1500 {
		t.Errorf("vhost: %+v", vh)
	}
	if va := links[6]; va.PeerIndex != 7 || va.PeerNetns != self || va.PortState != "" {
		t.Errorf("same-namespace veth: %+v", va)
	}
	if vl := links[8]; vl.PeerIndex != 0 || vl.PeerNetns != 0 || vl.MasterName != "" || vl.MasterIndex != 42 {
		t.Errorf("veth with unknown peer namespace: %+v", vl)
	}
}

func TestDirWatcherAncestor(t *testing.T) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Skip("no inotify:", err)
	}
	defer unix.Close(fd)
	root := t.TempDir()
	target := root + "/a/b"
	w := newDirWatcher(fd, []string{target})
	if w.ensure() {
		t.Fatal("ensure reported a missing directory as watched")
	}
	if len(w.wds) != 1 || len(w.watched) != 0 {
		t.Fatalf("want one ancestor watch: %v %v", w.wds, w.watched)
	}
	var anc int32
	for wd, p := range w.wds {
		anc = wd
		if p != root {
			t.Errorf("ancestor watched = %s, want %s", p, root)
		}
	}
	if err := unix.Mkdir(root+"/a", 0o755); err != nil {
		t.Fatal(err)
	}
	if w.event(anc, unix.IN_CREATE|unix.IN_ISDIR) {
		t.Error("intermediate directory reported as target")
	}
	if err := unix.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	var anc2 int32
	for wd, p := range w.wds {
		if p == root+"/a" {
			anc2 = wd
		}
	}
	if anc2 == 0 {
		t.Fatalf("no watch on %s/a: %v", root, w.wds)
	}
	if !w.event(anc2, unix.IN_CREATE|unix.IN_ISDIR) {
		t.Error("target creation did not ask for a scan")
	}
	wd, ok := w.watched[target]
	if !ok {
		t.Fatal("target not watched after creation")
	}
	if !w.event(wd, unix.IN_CREATE) {
		t.Error("event in target did not ask for a scan")
	}
	if w.event(12345, unix.IN_CREATE) {
		t.Error("unknown watch descriptor asked for a scan")
	}
}

func TestSameLinks(t *testing.T) {
	base := Link{Netns: 1, Index: 2, Name: "eth0", Kind: "veth", Up: true, MAC: "02:00:00:00:00:01", MTU: 1500,
		MasterIndex: 3, MasterName: "br0", PortState: "forwarding", PeerIndex: 4, PeerNetns: 5, Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}}
	a := map[int]*Link{2: &base}
	same := base
	same.Addrs = []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}
	if !sameLinks(a, map[int]*Link{2: &same}) {
		t.Error("equal views reported different")
	}
	for name, mutate := range map[string]func(*Link){
		"name":   func(l *Link) { l.Name = "eth1" },
		"up":     func(l *Link) { l.Up = false },
		"master": func(l *Link) { l.MasterName = "br1" },
		"port":   func(l *Link) { l.PortState = "blocking" },
		"peer":   func(l *Link) { l.PeerNetns = 6 },
		"addrs":  func(l *Link) { l.Addrs = []netip.Prefix{netip.MustParsePrefix("10.0.0.3/24")} },
		"mtu":    func(l *Link) { l.MTU = 9000 },
	} {
		c := base
		mutate(&c)
		if sameLinks(a, map[int]*Link{2: &c}) {
			t.Errorf("change of %s not noticed", name)
		}
	}
	if sameLinks(a, map[int]*Link{}) || sameLinks(a, map[int]*Link{7: &same}) {
		t.Error("different link sets reported equal")
	}
}

func TestNotePending(t *testing.T) {
	r := &Resolver{}
	t0 := time.Unix(1000, 0)
	// Files present at the first scan are old: no retries for them.
	if r.notePendingLocked([]string{"/d/stale"}, t0) {
		t.Error("stale file at first scan asks for retries")
	}
	if (&Resolver{}).notePendingLocked(nil, t0) {
		t.Error("nothing pending asks for retries")
	}
	if r.notePendingLocked([]string{"/d/stale"}, t0.Add(time.Second)) {
		t.Error("stale file asks for retries")
	}
	// A new file is retried within the window, not after.
	if !r.notePendingLocked([]string{"/d/stale", "/d/new"}, t0.Add(2*time.Second)) {
		t.Error("new file does not ask for retries")
	}
	if !r.notePendingLocked([]string{"/d/stale", "/d/new"}, t0.Add(6*time.Second)) {
		t.Error("new file not retried within the window")
	}
	if r.notePendingLocked([]string{"/d/stale", "/d/new"}, t0.Add(8*time.Second)) {
		t.Error("new file retried after the window")
	}
	// Once mounted (no longer pending) it is forgotten.
	r.notePendingLocked([]string{"/d/stale"}, t0.Add(9*time.Second))
	if _, ok := r.pendingSeen["/d/new"]; ok {
		t.Error("mounted file still tracked")
	}
}

// addrStrings spells addresses as CIDR strings, for comparisons.
func addrStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
