package gateway

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

// Limits of the echo reassembler: datagrams in reassembly at once, and how
// long one waits for its missing fragments (Linux waits 30 s, ipfrag_time;
// ping's own timeout makes a few seconds enough).
const (
	echoFragMax     = 16
	echoFragTimeout = 5 * time.Second
)

// echoFrags reassembles fragmented ICMP datagrams from containers to
// outside addresses (ping -s 3000), so echoOut sees the whole echo
// request: the stack would reassemble them but not answer for an outside
// address. It holds at most echoFragMax datagrams, each for at most
// echoFragTimeout; a new datagram meeting a full table forgets the
// oldest. Overlapping fragments drop the datagram, as Linux does.
type echoFrags struct {
	mu sync.Mutex
	m  map[echoFragKey]*echoDatagram
}

type echoFragKey struct {
	src, dst [4]byte
	id       uint16
}

type echoDatagram struct {
	head  []byte   // the first fragment's Ethernet and IP headers
	data  []byte   // the payload, as far as received
	parts [][2]int // payload byte ranges received
	total int      // payload length, once the last fragment came; else -1
	born  time.Time
}

// add takes frame, an IPv4 ICMP fragment, and returns the whole datagram
// as one frame (flags and offset cleared, header checksum fixed) when its
// last missing fragment came, else nil.
func (r *echoFrags) add(frame []byte, now time.Time) []byte {
	ip := packet.IPv4(packet.Ethernet(frame).Payload())
	hl := ip.HeaderLen()
	w := binary.BigEndian.Uint16(ip[6:8])
	off, payload := int(w&0x1fff)*8, ip[hl:ip.TotalLen()]
	end := off + len(payload)
	if end > 65535-hl || len(payload) == 0 || w&0x2000 != 0 && len(payload)%8 != 0 {
		return nil
	}
	k := echoFragKey{src: [4]byte(ip[12:16]), dst: [4]byte(ip[16:20]), id: binary.BigEndian.Uint16(ip[4:6])}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[echoFragKey]*echoDatagram{}
	}
	d := r.m[k]
	if d == nil {
		r.expire(now)
		d = &echoDatagram{total: -1, born: now}
		r.m[k] = d
	}
	for _, p := range d.parts {
		if off < p[1] && p[0] < end {
			delete(r.m, k) // overlap: drop the datagram
			return nil
		}
	}
	if off == 0 {
		d.head = append([]byte(nil), frame[:packet.EthernetHeaderLen+hl]...)
	}
	if w&0x2000 == 0 {
		d.total = end
	}
	if len(d.data) < end {
		d.data = append(d.data, make([]byte, end-len(d.data))...)
	}
	copy(d.data[off:], payload)
	d.parts = append(d.parts, [2]int{off, end})
	got := 0
	for _, p := range d.parts {
		got += p[1] - p[0]
	}
	if d.head == nil || d.total < 0 || got != d.total || len(d.data) != d.total {
		return nil
	}
	delete(r.m, k)
	f := append(d.head, d.data...)
	h := packet.IPv4(f[packet.EthernetHeaderLen:])
	binary.BigEndian.PutUint16(h[2:4], uint16(len(h)))
	binary.BigEndian.PutUint16(h[6:8], 0)
	h.SetChecksum(h.HeaderChecksum())
	return f
}

// expire forgets datagrams older than echoFragTimeout and, if the table
// is still full, the oldest one. r.mu is held.
func (r *echoFrags) expire(now time.Time) {
	var oldest echoFragKey
	var born time.Time
	for k, d := range r.m {
		if now.Sub(d.born) > echoFragTimeout {
			delete(r.m, k)
		} else if born.IsZero() || d.born.Before(born) {
			oldest, born = k, d.born
		}
	}
	if len(r.m) >= echoFragMax {
		delete(r.m, oldest)
	}
}

// fragmentFrame splits frame, an IPv4 packet in an Ethernet frame, into
// frames of at most mtu bytes of IP packet with IP identification id
// (frame itself if it fits).
func fragmentFrame(frame []byte, mtu int, id uint16) [][]byte {
	ip := packet.IPv4(frame[packet.EthernetHeaderLen:])
	if len(ip) <= mtu {
		return [][]byte{frame}
	}
	hl := ip.HeaderLen()
	payload := ip[hl:]
	step := (mtu - hl) &^ 7
	var out [][]byte
	for off := 0; off < len(payload); off += step {
		end := min(off+step, len(payload))
		f := make([]byte, packet.EthernetHeaderLen+hl+end-off)
		copy(f, frame[:packet.EthernetHeaderLen+hl])
		copy(f[packet.EthernetHeaderLen+hl:], payload[off:end])
		h := packet.IPv4(f[packet.EthernetHeaderLen:])
		binary.BigEndian.PutUint16(h[2:4], uint16(len(h)))
		binary.BigEndian.PutUint16(h[4:6], id)
		w := uint16(off / 8)
		if end < len(payload) {
			w |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:8], w)
		h.SetChecksum(h.HeaderChecksum())
		out = append(out, f)
	}
	return out
}
