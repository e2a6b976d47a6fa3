package dns

import (
	"encoding/binary"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"

	"github.com/vxmesh/vxmesh/internal/cowmap"
)

// AnswerSource is optionally implemented by a Source that also keeps its
// local answers precomputed. The UDP listeners then answer the plain
// queries for those names from the table without parsing them into
// messages or allocating; everything else takes the general path, which
// asks the Source. Answers must return a table built from the same
// records the Source's lookups see at that moment (one atomic snapshot).
type AnswerSource interface {
	Answers() *Answers
}

// Answers is an immutable table of precomputed local answers in wire
// format, per asker. Build one with NewAnswers and Add (or derive one from
// a published table with Next), then publish it; it is never changed after
// that.
type Answers struct {
	// slot maps each asker to its view's index in views; askers that see
	// the same networks share a view, so a new view for a group is one
	// write in views, not one per asker. It is a copy-on-write map
	// (cowmap): a table derived with Next copies the shards of the askers
	// it changes, not every asker.
	slot *cowmap.Map[string, int, cowmap.Strings]
	// slotW writes the table's own version of slot (nil until its first
	// change).
	slotW *cowmap.Writer[string, int, cowmap.Strings]
	// views are the views by slot; nil is a free slot.
	views []*AnswerView
	// index maps each view in views to its slot.
	index map[*AnswerView]int
}

// AnswerView is what one group of askers sees: lower-cased names without
// the trailing dot (A answers) and reverse names (PTR answers). It is
// immutable once made (NewAnswerView, Patch).
type AnswerView struct {
	names wireTable
	ptrs  wireTable
}

// wireTable maps names to their answers: a base map shared by the views
// patched from one another, and the few changes made since (over; an
// entry without records and n -1 is a name removed). A patch copies only
// the changes, not the whole table; the changes are folded into a new
// base once they outgrow foldAt, so a patch costs about the square root
// of the table's size, not its size.
type wireTable struct {
	base map[string]wireRRs
	over map[string]wireRRs
}

// gone marks a name removed since the base (wireTable.over).
var gone = wireRRs{n: -1}

// lookup returns the answers of key; the conversions to string in the map
// indexes do not allocate.
func (t *wireTable) lookup(key []byte) (wireRRs, bool) {
	if w, ok := t.over[string(key)]; ok {
		return w, w.n >= 0
	}
	w, ok := t.base[string(key)]
	return w, ok
}

// patched returns a copy of t to patch (set, drop, then fold): the base
// is shared, the changes copied.
func (t *wireTable) patched() wireTable {
	return wireTable{base: t.base, over: maps.Clone(t.over)}
}

// set gives name the answers w in a table from patched.
func (t *wireTable) set(name string, w wireRRs) {
	if t.over == nil {
		t.over = map[string]wireRRs{}
	}
	t.over[name] = w
}

// drop removes name from a table from patched.
func (t *wireTable) drop(name string) {
	if _, ok := t.base[name]; ok {
		t.set(name, gone)
	} else {
		delete(t.over, name)
	}
}

// fold makes a new base of t's base and changes once the changes
// outgrow foldAt (or always, with all), so that patches stay cheap.
func (t *wireTable) fold(all bool) {
	if len(t.over) == 0 || (!all && len(t.over) < foldAt(len(t.base))) {
		if len(t.over) == 0 {
			t.over = nil
		}
		return
	}
	base := maps.Clone(t.base)
	if base == nil {
		base = map[string]wireRRs{}
	}
	for k, w := range t.over {
		if w.n < 0 {
			delete(base, k)
		} else {
			base[k] = w
		}
	}
	t.base, t.over = base, nil
}

// foldAt is how many changes a table of n names keeps beside its base:
// twice the square root of n, which balances copying the changes at each
// patch against folding them into a copy of the base.
func foldAt(n int) int {
	return max(32, 2*int(math.Sqrt(float64(n))))
}

// wireRRs is a run of answer records whose owner name is a compression
// pointer to the question (offset 12), so one copy serves every spelling
// of the name. Records of type A are 16 bytes each and are rotated per
// answer to spread clients over the addresses.
type wireRRs struct {
	rrs []byte
	n   int
}

const (
	aRRLen      = 16 // C00C, type, class, TTL, rdlength 4, address
	optRRLen    = 11 // root, type OPT, class (UDP size), TTL, rdlength 0
	headerLen   = 12
	typeA       = 1
	typePTR     = 12
	typeOPT     = 41
	typeANY     = 255
	classINET   = 1
	classANY    = 255
	minUDPSize  = 512
	maxNameWire = 255
)

// NewAnswers returns an empty table.
func NewAnswers() *Answers {
	return &Answers{index: map[*AnswerView]int{}}
}

// Next returns a table to change (SetView, ReplaceView, Remove) into the
// next one, with the askers and views of a (which is not changed). Its
// cost does not grow with the askers: their map is shared, its shards
// copied as SetView and Remove write them.
func (a *Answers) Next() *Answers {
	return &Answers{slot: a.slot, views: slices.Clone(a.views), index: maps.Clone(a.index)}
}

// Add precomputes the answers askers get for names (lower-cased, without
// the trailing dot) and for the PTR names of addrs, from lookupName and
// lookupAddr, which must be what the Source answers for each of askers.
// The askers share one view, so they must see the same records. Names the
// fast path cannot match (characters other than letters, digits, '-' and
// '_', empty labels) and names with SRV records are left to the general
// path.
func (a *Answers) Add(askers []string, names []string, addrs []netip.Addr,
	lookupName func(name string) (Records, bool), lookupAddr func(netip.Addr) ([]string, uint32)) {
	a.SetView(askers, NewAnswerView(names, addrs, lookupName, lookupAddr))
}

// SetView makes v the view of askers. Like Add, it is for a table not
// published yet.
func (a *Answers) SetView(askers []string, v *AnswerView) {
	i, ok := a.index[v]
	if !ok {
		i = slices.Index(a.views, nil)
		if i < 0 {
			i = len(a.views)
			a.views = append(a.views, nil)
		}
		a.views[i], a.index[v] = v, i
	}
	w := a.ownSlot()
	for _, asker := range askers {
		w.Set(asker, i)
	}
}

// ReplaceView gives every asker of view old the view v instead (nil: no
// view, for askers about to be removed). Like SetView, it is for a table
// not published yet.
func (a *Answers) ReplaceView(old, v *AnswerView) {
	i, ok := a.index[old]
	if !ok {
		return
	}
	delete(a.index, old)
	a.views[i] = v
	if v != nil {
		a.index[v] = i
	}
}

// Remove drops asker from a table not published yet.
func (a *Answers) Remove(asker string) {
	a.ownSlot().Delete(asker)
}

// Askers lists the askers of the table, sorted.
func (a *Answers) Askers() []string {
	return slices.Sorted(maps.Keys(maps.Collect(a.slot.All())))
}

// ownSlot returns the writer of a's own version of the askers' map,
// shared until then with the table Next derived a from.
func (a *Answers) ownSlot() *cowmap.Writer[string, int, cowmap.Strings] {
	if a.slotW == nil {
		a.slotW = cowmap.NewWriter(a.slot)
		a.slot = a.slotW.Map()
	}
	return a.slotW
}

// View returns the view of asker, or nil.
func (a *Answers) View(asker string) *AnswerView { return a.view(asker) }

// NewAnswerView precomputes the answers for names and the PTR names of
// addrs, as Add does, as a view to share (SetView) or patch (Patch).
func NewAnswerView(names []string, addrs []netip.Addr,
	lookupName func(name string) (Records, bool), lookupAddr func(netip.Addr) ([]string, uint32)) *AnswerView {
	v := &AnswerView{
		names: wireTable{base: make(map[string]wireRRs, len(names))},
		ptrs:  wireTable{base: make(map[string]wireRRs, len(addrs))},
	}
	for _, name := range names {
		if w, ok := nameAnswer(name, lookupName); ok {
			v.names.base[name] = w
		}
	}
	for _, ip := range addrs {
		if key, w, ok := addrAnswer(ip, lookupAddr); ok {
			v.ptrs.base[key] = w
		}
	}
	return v
}

// Patch returns a copy of v (v is not changed) in which the answers for
// names and the PTR names of addrs are computed again from lookupName and
// lookupAddr: those that no longer find anything are dropped. It answers
// as the view NewAnswerView makes of all the names and addresses, when
// the others' answers did not change (Flatten makes it equal). It copies
// only the changes since the views' last common base, not every answer.
func (v *AnswerView) Patch(names []string, addrs []netip.Addr,
	lookupName func(name string) (Records, bool), lookupAddr func(netip.Addr) ([]string, uint32)) *AnswerView {
	out := &AnswerView{names: v.names.patched(), ptrs: v.ptrs.patched()}
	for _, name := range names {
		if w, ok := nameAnswer(name, lookupName); ok {
			out.names.set(name, w)
		} else {
			out.names.drop(name)
		}
	}
	for _, ip := range addrs {
		if !ip.Is4() {
			continue
		}
		if key, w, ok := addrAnswer(ip, lookupAddr); ok {
			out.ptrs.set(key, w)
		} else {
			out.ptrs.drop(reverseName(ip.As4()))
		}
	}
	out.names.fold(false)
	out.ptrs.fold(false)
	return out
}

// Flatten returns v with its changes folded into its tables (v is not
// changed): two views that answer the same are then equal
// (reflect.DeepEqual), however they were patched.
func (v *AnswerView) Flatten() *AnswerView {
	out := &AnswerView{names: v.names.patched(), ptrs: v.ptrs.patched()}
	out.names.fold(true)
	out.ptrs.fold(true)
	return out
}

// nameAnswer precomputes the A answer of name, if the fast path can give
// it.
func nameAnswer(name string, lookupName func(name string) (Records, bool)) (wireRRs, bool) {
	if !fastName(name) {
		return wireRRs{}, false
	}
	got, ok := lookupName(name)
	if !ok || len(got.SRV) > 0 {
		return wireRRs{}, false
	}
	var w wireRRs
	for _, ip := range got.Addrs {
		if !ip.Is4() {
			continue
		}
		b := ip.As4()
		w.rrs = append(w.rrs, 0xC0, headerLen, 0, typeA, 0, classINET)
		w.rrs = binary.BigEndian.AppendUint32(w.rrs, got.TTL)
		w.rrs = append(w.rrs, 0, 4, b[0], b[1], b[2], b[3])
		w.n++
	}
	return w, true
}

// addrAnswer precomputes the PTR answer of ip under its reverse name, if
// the fast path can give it.
func addrAnswer(ip netip.Addr, lookupAddr func(netip.Addr) ([]string, uint32)) (string, wireRRs, bool) {
	if !ip.Is4() {
		return "", wireRRs{}, false
	}
	got, ttl := lookupAddr(ip)
	if len(got) == 0 {
		return "", wireRRs{}, false
	}
	var w wireRRs
	for _, n := range got {
		if w.rrs = appendPTR(w.rrs, n, ttl); w.rrs == nil {
			break
		}
		w.n++
	}
	if w.rrs == nil {
		return "", wireRRs{}, false
	}
	return reverseName(ip.As4()), w, true
}

// reverseName is the lower-case PTR name of b without the trailing dot.
func reverseName(b [4]byte) string {
	return strconv.Itoa(int(b[3])) + "." + strconv.Itoa(int(b[2])) + "." + strconv.Itoa(int(b[1])) + "." +
		strconv.Itoa(int(b[0])) + ".in-addr.arpa"
}

// appendPTR appends a PTR record naming target, or returns nil if target
// is not a name the fast path writes (then the address is left to the
// general path).
func appendPTR(rrs []byte, target string, ttl uint32) []byte {
	if !fastName(target) || len(target)+2 > maxNameWire {
		return nil
	}
	rrs = append(rrs, 0xC0, headerLen, 0, typePTR, 0, classINET)
	rrs = binary.BigEndian.AppendUint32(rrs, ttl)
	rrs = binary.BigEndian.AppendUint16(rrs, uint16(len(target)+2))
	start := 0
	for i := 0; i <= len(target); i++ {
		if i == len(target) || target[i] == '.' {
			rrs = append(rrs, byte(i-start))
			rrs = append(rrs, target[start:i]...)
			start = i + 1
		}
	}
	return append(rrs, 0)
}

// fastName reports whether name (dotted, without the trailing dot) is made
// of non-empty labels of at most 63 bytes of lower-case letters, digits,
// '-' and '_': the names whose presentation form and wire form match
// byte for byte.
func fastName(name string) bool {
	if name == "" || len(name)+1 > maxNameWire {
		return false
	}
	label := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		if label++; label > 63 {
			return false
		}
	}
	return label > 0
}

// Answer writes into out the precomputed response of asker's UDP query q
// and returns its length, or returns 0 when q is to take the general path
// (see the listeners). It does not allocate.
func (a *Answers) Answer(asker string, q, out []byte) int {
	return a.view(asker).answer(q, out, 0)
}

// view returns the answers asker sees, or nil.
func (a *Answers) view(asker string) *AnswerView {
	if a == nil {
		return nil
	}
	i, ok := a.slot.Get(asker)
	if !ok {
		return nil
	}
	return a.views[i]
}

// answer writes into out the response to the UDP query q when it is a plain
// query for a name in v, and returns its length; 0 means "take the general
// path". Plain means: not a response, opcode QUERY, no TC, Z or RCODE
// bits, one question of class IN or ANY with an uncompressed name, no
// other records but at most one OPT of version 0 without options, and
// nothing after. rot picks the first of several A records. It does not
// allocate.
func (v *AnswerView) answer(q, out []byte, rot uint) int {
	if v == nil || len(q) < headerLen+5 || q[2]&0xFE != 0 || q[3]&0xCF != 0 {
		return 0
	}
	if q[4] != 0 || q[5] != 1 || q[6]|q[7]|q[8]|q[9]|q[10] != 0 || q[11] > 1 {
		return 0
	}
	var key [maxNameWire]byte
	k, i := lowerName(q, &key)
	qend := i + 5
	if k == 0 || k+2 > maxNameWire || qend > len(q) {
		return 0
	}
	qtype := binary.BigEndian.Uint16(q[i+1:])
	if class := binary.BigEndian.Uint16(q[i+3:]); class != classINET && class != classANY {
		return 0
	}
	limit, edns, do := minUDPSize, false, false
	switch {
	case q[11] == 0 && qend == len(q):
	case q[11] == 1 && qend+optRRLen == len(q) && q[qend] == 0 &&
		binary.BigEndian.Uint16(q[qend+1:]) == typeOPT && q[qend+5]|q[qend+6] == 0 &&
		q[qend+9]|q[qend+10] == 0:
		// An OPT of extended RCODE 0 and version 0 without options; its
		// DO bit is copied into the answer's (RFC 3225 §3), as the
		// general path does.
		edns = true
		do = q[qend+7]&0x80 != 0
		limit = max(limit, int(binary.BigEndian.Uint16(q[qend+3:])))
	default:
		return 0
	}
	var w wireRRs
	var ok bool
	if qtype == typePTR {
		w, ok = v.ptrs.lookup(key[:k])
	} else {
		w, ok = v.names.lookup(key[:k])
		if qtype != typeA && qtype != typeANY {
			w = wireRRs{} // a precomputed name has no other records
		}
	}
	if !ok {
		return 0
	}
	size := qend + len(w.rrs)
	if edns {
		size += optRRLen
	}
	if size > limit || size > len(out) {
		return 0 // the general path truncates
	}
	putAnswerHeader(out, q[:qend], w.n)
	n := qend
	if qtype == typePTR || w.n < 2 {
		n += copy(out[n:], w.rrs)
	} else {
		r := int(rot%uint(w.n)) * aRRLen
		n += copy(out[n:], w.rrs[r:])
		n += copy(out[n:], w.rrs[:r])
	}
	if edns {
		out[11] = 1
		n += putOPT(out[n:], do)
	}
	return n
}

// lowerName reads the question's name from q into key, lowercased, dots
// between its labels; it returns the key's length and the index of the
// name's end (its root label), or 0 for a name the fast path does not
// answer (too long, compressed, other characters).
func lowerName(q []byte, key *[maxNameWire]byte) (k, i int) {
	i = headerLen
	for {
		if i >= len(q) {
			return 0, i
		}
		l := int(q[i])
		if l == 0 {
			return k, i
		}
		if l > 63 || i+1+l >= len(q) || k+l+1 > len(key) {
			return 0, i
		}
		if k > 0 {
			key[k] = '.'
			k++
		}
		for _, c := range q[i+1 : i+1+l] {
			switch {
			case c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			default:
				return 0, i
			}
			key[k] = c
			k++
		}
		i += 1 + l
	}
}

// putAnswerHeader writes the header and question of the answer to
// question (the query up to its question's end) with n answer records.
func putAnswerHeader(out, question []byte, n int) {
	copy(out, question)
	out[2] = 0x80 | 0x04 | question[2]&0x01 // QR, AA, RD copied
	out[3] = 0x80 | question[3]&0x10        // RA, CD copied
	binary.BigEndian.PutUint16(out[6:], uint16(n))
	out[8], out[9], out[10], out[11] = 0, 0, 0, 0
}

// putOPT writes the answer's OPT record, with the DO bit when do, and
// returns its length.
func putOPT(out []byte, do bool) int {
	out[0] = 0
	binary.BigEndian.PutUint16(out[1:], typeOPT)
	binary.BigEndian.PutUint16(out[3:], maxUDPRead)
	clear(out[5:optRRLen])
	if do {
		out[7] = 0x80
	}
	return optRRLen
}
