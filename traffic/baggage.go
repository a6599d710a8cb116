package traffic

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"go.opentelemetry.io/otel/baggage"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/sticky"
)

// Decision returns the color decided for channel in ctx's baggage. Malformed pairs and
// colors other than blue and green are ignored; the first valid pair for the channel wins.
// It allocates nothing, whether or not a decision is present.
func Decision(ctx context.Context, channel string) (deploy.Color, bool) {
	return sticky.Decision(ctx, channel)
}

// parseDecisions returns every valid channel → color pair of a decision value, ignoring
// malformed ones (the first valid pair of a channel wins). For tools and tests; the
// interceptors use Decision.
func parseDecisions(value string) map[string]deploy.Color {
	out := map[string]deploy.Color{}
	for p := range sticky.Pairs(value) {
		if p.Color != "" && out[p.Channel] == "" && deploy.ValidateName("channel", p.Channel) == nil {
			out[p.Channel] = p.Color
		}
	}
	return out
}

// WithDecision returns ctx with channel's decision set to color in its baggage, keeping the
// other channels' decisions and every other baggage member. It replaces an existing decision
// for channel; the client interceptors never do that, they keep what they find. Like
// OpenTelemetry, it does not limit the baggage in ctx: the client interceptors enforce the W3C
// limits when they write the `baggage` header, and the decision member goes first.
func WithDecision(ctx context.Context, channel string, color deploy.Color) (context.Context, error) {
	if err := deploy.ValidateName("channel", channel); err != nil {
		return ctx, fmt.Errorf("traffic: decision: %w", err)
	}
	if color != deploy.Blue && color != deploy.Green {
		return ctx, fmt.Errorf("traffic: decision for %q: color %q must be blue or green", channel, color)
	}
	b := baggage.FromContext(ctx)
	decisions := parseDecisions(b.Member(deploy.BaggageKey).Value())
	decisions[channel] = color
	parts := make([]string, 0, len(decisions))
	for _, ch := range slices.Sorted(maps.Keys(decisions)) {
		parts = append(parts, ch+"="+string(decisions[ch]))
	}
	m, err := baggage.NewMemberRaw(deploy.BaggageKey, strings.Join(parts, "&"))
	if err != nil {
		return ctx, fmt.Errorf("traffic: decision: %w", err)
	}
	if n := len(deploy.BaggageKey) + 1 + len(m.Value()); n > MaxBaggageMemberBytes { // channel names need no escaping
		return ctx, fmt.Errorf("traffic: decision: member %s would be %d bytes with %d channels' decisions, over the %d bytes a baggage member may have; finish releases the requests no longer need",
			deploy.BaggageKey, n, len(decisions), MaxBaggageMemberBytes)
	}
	b, _ = b.SetMember(m) // fails only for an invalid member
	return baggage.ContextWithBaggage(ctx, b), nil
}

// The W3C Baggage limits (https://www.w3.org/TR/baggage/#limits) the interceptors enforce on
// the wire, counted on the members as OpenTelemetry writes them (Member.String).
const (
	MaxBaggageMembers     = 64   // list-members in all the baggage headers of a request
	MaxBaggageBytes       = 8192 // bytes of the list-members and the commas between them
	MaxBaggageMemberBytes = 4096 // bytes of one list-member
)

// limitBaggage returns the baggage-string that goes on the wire for the baggage-strings of
// groups read in order (a later member replaces an earlier one of the same key, as in
// OpenTelemetry), within the W3C limits:
//
//   - a member that OpenTelemetry's Parse would reject, or of more than
//     MaxBaggageMemberBytes, is skipped;
//   - the decision member (deploy.BaggageKey) comes first: its last legal occurrence is kept, and
//     the others get what it leaves of the limits;
//   - the other members are taken in order until the next one would exceed
//     MaxBaggageMembers or MaxBaggageBytes; the rest is dropped, as OpenTelemetry's Parse
//     stops at the limits.
//
// It reads each byte a bounded number of times and allocates only the result (nothing when
// the result is a single input string unchanged); dropped counts the members not kept.
func limitBaggage(groups ...[]string) (out string, dropped int) {
	var sel selection
	sel.decide(groups)
	sel.take(groups)
	return sel.result(groups)
}

// member is one list-member of a baggage-string, as read without allocating.
type member struct {
	key  string // trimmed, as OpenTelemetry keys it
	text string // as it came
	size int    // bytes it takes on the wire: the larger of len(text) and len(Member.String())
}

type selection struct {
	dec     member
	hasDec  bool
	kept    [MaxBaggageMembers]member // the other members
	n       int
	bytes   int  // of kept[:n] and the commas between them
	seen    int  // members read
	stopped bool // a member did not fit: the rest was not read
}

// decide finds the last legal decision member, reading backwards.
func (s *selection) decide(groups [][]string) {
	for g := len(groups) - 1; g >= 0; g-- {
		for l := len(groups[g]) - 1; l >= 0; l-- {
			list := groups[g][l]
			for list != "" {
				var seg string
				if i := strings.LastIndexByte(list, ','); i >= 0 {
					list, seg = list[:i], list[i+1:]
				} else {
					list, seg = "", list
				}
				if keyOf(seg) != deploy.BaggageKey {
					continue
				}
				if m, ok := readMember(seg); ok && m.size <= MaxBaggageMemberBytes {
					s.dec, s.hasDec = m, true
					return
				}
			}
		}
	}
}

// take reads the other members in order until one does not fit.
func (s *selection) take(groups [][]string) {
	maxN, maxB := MaxBaggageMembers, MaxBaggageBytes
	if s.hasDec {
		maxN, maxB = maxN-1, maxB-s.dec.size-1
	}
	for _, g := range groups {
		for _, list := range g {
			if list == "" {
				continue
			}
			for more := true; more; { // every segment, as OpenTelemetry splits: "a=1," has two
				var seg string
				seg, list, more = strings.Cut(list, ",")
				s.seen++
				if keyOf(seg) == deploy.BaggageKey {
					continue // the decision is s.dec
				}
				m, ok := readMember(seg)
				if !ok || m.size > MaxBaggageMemberBytes {
					continue
				}
				j := 0
				for j < s.n && s.kept[j].key != m.key {
					j++
				}
				if j < s.n { // a later value replaces an earlier one
					if s.bytes-s.kept[j].size+m.size > maxB {
						s.stopped = true
						return
					}
					s.bytes += m.size - s.kept[j].size
					s.kept[j] = m
					continue
				}
				add := m.size
				if s.n > 0 {
					add++
				}
				if s.n == maxN || s.bytes+add > maxB {
					s.stopped = true
					return
				}
				s.kept[s.n] = m
				s.n++
				s.bytes += add
			}
		}
	}
}

// result writes the selection as one baggage-string.
func (s *selection) result(groups [][]string) (string, int) {
	kept := s.n
	if s.hasDec {
		kept++
	}
	lists, only := 0, ""
	for _, g := range groups {
		for _, l := range g {
			if l != "" {
				lists, only = lists+1, l
			}
		}
	}
	if lists == 1 && !s.stopped && kept == s.seen {
		return only, 0 // every member of the only list is kept as it came
	}
	dropped := -1 // an estimate once stopped: the members after the stop were not counted
	if !s.stopped {
		dropped = s.seen - kept
	}
	size := max(kept-1, 0)
	if s.hasDec {
		size += len(s.dec.text)
	}
	for _, m := range s.kept[:s.n] {
		size += len(m.text)
	}
	var b strings.Builder
	b.Grow(size)
	if s.hasDec {
		b.WriteString(s.dec.text)
	}
	for _, m := range s.kept[:s.n] {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(m.text)
	}
	return b.String(), dropped
}

// keyOf returns the trimmed key of a list-member, or "" if it has none before a property.
func keyOf(seg string) string {
	for i := 0; i < len(seg); i++ {
		switch seg[i] {
		case '=':
			return strings.TrimSpace(seg[:i])
		case ';':
			return ""
		}
	}
	return ""
}

// readMember checks a list-member as OpenTelemetry's Parse does (W3C grammar: a token key,
// a value of baggage-octets and valid percent-escapes, properties), without allocating, and
// computes its size as OpenTelemetry writes it: the value unescaped, invalid UTF-8 replaced by
// U+FFFD, escaped again; the properties with empty ones removed.
func readMember(seg string) (member, bool) {
	keyValue, meta, hasMeta := strings.Cut(seg, ";")
	metaLen := 0
	if hasMeta {
		var ok bool
		if metaLen, ok = metadataLen(meta); !ok {
			return member{}, false
		}
	}
	k, v, ok := strings.Cut(keyValue, "=")
	if !ok {
		return member{}, false
	}
	key, value := strings.TrimSpace(k), strings.TrimSpace(v)
	if key == "" || !validChars(key, &keyChars) || !validChars(value, &valueChars) || !validEscapes(value) {
		return member{}, false
	}
	size := len(key) + 1 + encodedValueLen(value)
	if metaLen > 0 {
		size += 1 + metaLen
	}
	return member{key: key, text: seg, size: max(size, len(seg))}, true
}

// metadataLen checks the properties of a member (what follows its first ';') and returns
// their length with empty ones removed, as OpenTelemetry keeps them.
func metadataLen(meta string) (int, bool) {
	n, props := 0, 0
	for {
		p, rest, more := strings.Cut(meta, ";")
		if p != "" {
			if !validProperty(p) {
				return 0, false
			}
			n, props = n+len(p), props+1
		}
		if !more {
			break
		}
		meta = rest
	}
	if props > 1 {
		n += props - 1
	}
	return n, true
}

// validProperty checks a property: OWS key OWS [ "=" OWS value OWS ].
func validProperty(p string) bool {
	i := skipOWS(p, 0)
	start := i
	for i < len(p) && keyChars[p[i]] {
		i++
	}
	if i == start {
		return false
	}
	i = skipOWS(p, i)
	if i == len(p) {
		return true
	}
	if p[i] != '=' {
		return false
	}
	i = skipOWS(p, i+1)
	start = i
	for i < len(p) && valueChars[p[i]] {
		i++
	}
	value := p[start:i]
	return skipOWS(p, i) == len(p) && validEscapes(value)
}

func skipOWS(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

func validChars(s string, set *[256]bool) bool {
	for i := 0; i < len(s); i++ {
		if !set[s[i]] {
			return false
		}
	}
	return true
}

// validEscapes says whether every '%' starts a %XX escape.
func validEscapes(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' {
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false
			}
			i += 2
		}
	}
	return true
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// encodedValueLen is the length OpenTelemetry writes a value with escapes (already checked)
// in: unescaped, each invalid UTF-8 byte replaced by U+FFFD, then every byte that is not a
// baggage-octet, and '%', written %XX. It decodes each byte at most 5 times.
func encodedValueLen(raw string) int {
	if strings.IndexByte(raw, '%') < 0 {
		return len(raw) // baggage-octets only, written as they are
	}
	total := 0
	for i := 0; i < len(raw); {
		c, n := decodedByte(raw, i)
		if c < utf8.RuneSelf {
			if c == '%' || !valueChars[c] {
				total += 3
			} else {
				total++
			}
			i += n
			continue
		}
		var w [utf8.UTFMax]byte // the rune starting at i, unescaped
		k := 0
		for j := i; k < len(w) && j < len(raw); k++ {
			w[k], n = decodedByte(raw, j)
			j += n
		}
		r, size := utf8.DecodeRune(w[:k])
		if r == utf8.RuneError && size == 1 {
			total += 9 // U+FFFD, %EF%BF%BD
		} else {
			total += 3 * size
		}
		for range size {
			_, n = decodedByte(raw, i)
			i += n
		}
	}
	return total
}

// decodedByte returns the byte at raw[i], unescaped, and how many bytes of raw it took.
func decodedByte(raw string, i int) (byte, int) {
	if raw[i] == '%' {
		return unhex(raw[i+1])<<4 | unhex(raw[i+2]), 3
	}
	return raw[i], 1
}

// keyChars are the bytes of a W3C token (RFC 7230): a baggage key or property key.
var keyChars = charset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

// valueChars are W3C baggage-octets: 0x21, 0x23–0x2B, 0x2D–0x3A, 0x3C–0x5B, 0x5D–0x7E.
var valueChars = func() [256]bool {
	var set [256]bool
	for c := 0x21; c <= 0x7e; c++ {
		set[c] = c != '"' && c != ',' && c != ';' && c != '\\'
	}
	return set
}()

func charset(s string) [256]bool {
	var set [256]bool
	for i := 0; i < len(s); i++ {
		set[s[i]] = true
	}
	return set
}

// sortedMembers returns b's members as OpenTelemetry writes them, by key: a deterministic
// order for choosing what to drop of baggage over the limits.
func sortedMembers(b baggage.Baggage) []string {
	ms := b.Members()
	slices.SortFunc(ms, func(x, y baggage.Member) int { return strings.Compare(x.Key(), y.Key()) })
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		if s := m.String(); s != "" {
			out = append(out, s)
		}
	}
	return out
}
