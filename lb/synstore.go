package lb

import (
	"encoding/binary"
	"sync"

	"github.com/vxmesh/vxmesh/packet"
)

// DefaultSynSlots is the default number of remembered SYNs.
const DefaultSynSlots = 4096

// synStore remembers the last SYN each client port sent to a VIP (its
// IPv4 and TCP header fields), so that when a backend refuses it the
// balancer can send the same SYN to the next backend at once instead of
// waiting for the client's retransmission. It is a fixed, direct-mapped
// array keyed by (network, client IP, client port): a collision only
// loses the fast retry (the client's own retransmission still moves).
type synStore struct {
	locks [Shards]sync.Mutex
	slots []synSlot
	seed  uint64
}

type synSlot struct {
	net    uint32
	client [4]byte
	vip    [4]byte
	cport  uint16
	vport  uint16
	ipID   uint16
	tos    uint8
	ttl    uint8
	frag   uint8 // high byte of the flags/fragment word (DF)
	tcpLen uint8 // 0: empty
	at     int64
	tcp    [60]byte
}

func newSynStore(n int, seed uint64) *synStore {
	if n <= 0 {
		n = DefaultSynSlots
	}
	return &synStore{slots: make([]synSlot, n), seed: seed}
}

func (st *synStore) slot(net uint32, client [4]byte, cport uint16) (*synSlot, *sync.Mutex) {
	h := mix64(st.seed ^ uint64(net)<<40 ^ uint64(cport)<<32 ^ uint64(binary.BigEndian.Uint32(client[:])))
	i := h % uint64(len(st.slots))
	return &st.slots[i], &st.locks[i%Shards]
}

// put remembers p, a SYN without payload from the client (before
// translation), at now.
func (st *synStore) put(net uint32, p *pkt, now int64) {
	f := p.f
	doff := int(f[p.l4+12]>>4) * 4
	if p.end != p.l4+doff {
		return // data on the SYN (TFO): not re-sent by us
	}
	client := [4]byte(f[offIPSrc:])
	s, mu := st.slot(net, client, p.sport)
	mu.Lock()
	*s = synSlot{net: net, client: client, vip: [4]byte(f[offIPDst:]), cport: p.sport, vport: p.dport,
		ipID: binary.BigEndian.Uint16(f[offIP+4:]), tos: f[offIP+1], ttl: f[offIP+8], frag: f[offIP+6] & 0x40,
		tcpLen: uint8(doff), at: now}
	copy(s.tcp[:], f[p.l4:p.end])
	mu.Unlock()
}

// get copies the SYN remembered for the key if it was stored after since.
func (st *synStore) get(net uint32, client [4]byte, cport uint16, since int64, out *synSlot) bool {
	s, mu := st.slot(net, client, cport)
	mu.Lock()
	defer mu.Unlock()
	if s.tcpLen == 0 || s.net != net || s.client != client || s.cport != cport || s.at < since {
		return false
	}
	*out = *s
	return true
}

// RetryBufLen is a buffer length that holds any SYN WriteRetry writes.
const RetryBufLen = packet.EthernetHeaderLen + 20 + 60

// WriteRetry writes into dst (at least RetryBufLen bytes, not
// overlapping frame) the client's SYN re-addressed to the backend its
// connection moved to, after Untranslate returned Retry for frame (a
// backend's RST to that SYN). The SYN is the client's own (same
// sequence number and options), already translated: forward it towards
// the backend as if the client's port had sent it, with a cleared offload
// slot (its checksums are complete). It returns the SYN's length, or 0
// (send nothing: the client's retransmission will reach the new backend)
// if the SYN is no longer known.
func (t *Table) WriteRetry(dst, frame []byte, now int64) int {
	if len(dst) < RetryBufLen || len(frame) < minIPFrame+20 {
		return 0
	}
	client, cport := [4]byte(frame[offIPDst:]), binary.BigEndian.Uint16(frame[minIPFrame+2:])
	var syn synSlot
	if !t.ct.syns.get(t.net, client, cport, now-t.ct.to.syn, &syn) {
		return 0
	}
	k := flowKey{net: t.net, proto: protoTCP, client: client, cport: cport, vip: syn.vip, vport: syn.vport}
	s := t.ct.shardOf(k.net, k.proto, k.client, k.cport)
	s.mu.Lock()
	i := t.ct.findFwd(s, &k, now)
	if i == 0 || s.e[i].state != stSynSent || s.e[i].flags&flUnsent == 0 {
		s.mu.Unlock()
		return 0
	}
	e := &s.e[i]
	e.flags &^= flUnsent
	e.since = now
	addr, port, mac := e.backend, e.bport, e.mac
	s.mu.Unlock()
	return writeSyn(dst, frame, &syn, addr, port, mac)
}

// writeSyn builds the remembered SYN from the client (its MAC is the
// RST's destination) to addr:port at mac, with complete checksums.
func writeSyn(dst, rst []byte, syn *synSlot, addr [4]byte, port uint16, mac [6]byte) int {
	n := minIPFrame + int(syn.tcpLen)
	copy(dst[0:6], mac[:])
	copy(dst[6:12], rst[0:6])
	binary.BigEndian.PutUint16(dst[12:], packet.EtherTypeIPv4)
	ip := packet.IPv4(dst[offIP:minIPFrame])
	clear(ip)
	ip[0], ip[1] = 0x45, syn.tos
	binary.BigEndian.PutUint16(ip[2:], uint16(20+int(syn.tcpLen)))
	binary.BigEndian.PutUint16(ip[4:], syn.ipID)
	ip[6], ip[8], ip[9] = syn.frag, syn.ttl, protoTCP
	copy(ip[12:16], syn.client[:])
	copy(ip[16:20], addr[:])
	ip.SetChecksum(ip.HeaderChecksum())
	tcp := dst[minIPFrame:n]
	copy(tcp, syn.tcp[:syn.tcpLen])
	binary.BigEndian.PutUint16(tcp[2:], port)
	binary.BigEndian.PutUint16(tcp[16:], 0)
	sum := packet.Sum(tcp, packet.Sum(dst[offIPSrc:offIPSrc+8], uint64(protoTCP)+uint64(syn.tcpLen)))
	binary.BigEndian.PutUint16(tcp[16:], packet.Fold(sum))
	return n
}
