package nftrace

import (
	"bufio"
	"bytes"
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ruleTexts renders rules as `nft -a list chain` prints them and, for the
// tables iptables-nft manages, as iptables-save prints them. Listings are
// cached for a moment so that a flood of drops costs one listing.
type ruleTexts struct {
	mu    sync.Mutex
	cache map[chainRef]listing
	// run runs a command and returns its standard output (tests replace it).
	run func(name string, args ...string) ([]byte, error)
}

type chainRef struct{ family, table, chain string }

type listing struct {
	at       time.Time
	nft      map[uint64]string
	iptables map[uint64]string
}

// cacheFor is how long a chain's listing is trusted.
const cacheFor = 2 * time.Second

func newRuleTexts() *ruleTexts {
	return &ruleTexts{cache: map[chainRef]listing{}, run: runCmd}
}

func runCmd(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).Output()
}

// text returns the rule's nft text and iptables-save form (either may be
// empty: no nft binary, not an iptables table, the rule gone).
func (r *ruleTexts) text(family, table, chain string, handle uint64) (nft, ipt string) {
	ref := chainRef{family, table, chain}
	r.mu.Lock()
	defer r.mu.Unlock()
	l, ok := r.cache[ref]
	_, known := l.nft[handle]
	if !ok || time.Since(l.at) > cacheFor || (!known && time.Since(l.at) > 100*time.Millisecond) {
		l = r.list(ref)
		r.cache[ref] = l
	}
	return l.nft[handle], l.iptables[handle]
}

func (r *ruleTexts) list(ref chainRef) listing {
	l := listing{at: time.Now(), nft: map[uint64]string{}, iptables: map[uint64]string{}}
	out, err := r.run("nft", "-a", "list", "chain", ref.family, ref.table, ref.chain)
	if err != nil {
		return l
	}
	handles := parseNftChain(out, l.nft)
	save := ""
	switch ref.family {
	case "ip":
		save = "iptables-nft-save"
	case "ip6":
		save = "ip6tables-nft-save"
	}
	if save == "" || !iptablesTable[ref.table] {
		return l
	}
	out, err = r.run(save, "-t", ref.table)
	if err != nil {
		return l
	}
	rules := parseIptablesChain(out, ref.chain)
	if len(rules) != len(handles) {
		return l // not the same rules: do not guess
	}
	for i, h := range handles {
		l.iptables[h] = rules[i]
	}
	return l
}

// iptablesTable are the tables iptables-nft creates.
var iptablesTable = map[string]bool{"filter": true, "nat": true, "mangle": true, "raw": true, "security": true}

var (
	handleRe  = regexp.MustCompile(`\s*# handle (\d+)$`)
	counterRe = regexp.MustCompile(`counter packets \d+ bytes \d+ ?`)
)

// parseNftChain reads `nft -a list chain` output into handle → rule text
// (counters removed: their numbers change with every packet) and returns
// the handles in rule order.
func parseNftChain(out []byte, into map[uint64]string) []uint64 {
	var handles []uint64
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "table ") || strings.HasPrefix(line, "chain ") || strings.HasPrefix(line, "#") {
			continue
		}
		m := handleRe.FindStringSubmatchIndex(line)
		if m == nil {
			continue
		}
		h, err := strconv.ParseUint(line[m[2]:m[3]], 10, 64)
		if err != nil {
			continue
		}
		text := strings.TrimSpace(counterRe.ReplaceAllString(line[:m[0]], ""))
		into[h] = text
		handles = append(handles, h)
	}
	return handles
}

// parseIptablesChain returns the chain's `-A CHAIN ...` lines in order.
func parseIptablesChain(out []byte, chain string) []string {
	var rules []string
	prefix := "-A " + chain + " "
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, prefix) || line == "-A "+chain {
			rules = append(rules, line)
		}
	}
	return rules
}
