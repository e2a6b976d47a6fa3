package gateway

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/vxmesh/vxmesh/packet"
)

// device is the gateway's wire side, a netdev.Device.
type device struct {
	g       *Gateway
	rmu     sync.Mutex // one reader at a time; guards pending, seg
	pending *stack.PacketBuffer
	seg     segmenter
	wmu     sync.Mutex // guards scratch
	scratch []byte
	syns    synTable // the SYNs on their way to the TCP forwarder

	rx, tx, rxDropped atomic.Uint64
}

func (d *device) Name() string   { return "gw-" + d.g.cfg.Name }
func (d *device) BatchSize() int { return packet.BatchSize }
func (d *device) Close() error   { d.g.stopping.Store(true); d.g.cancel(); return nil }

// Read blocks for the stack's next frame, then takes whatever else is
// queued, up to len(bufs). A TCP segment the stack built larger than the
// MTU (segmentation offload, up to gsoMaxSize) is returned whole, with
// GSO metadata (packet.Offload), when its buffer holds it; if the first
// buffer cannot, Read returns io.ErrShortBuffer and keeps the frame for
// the next Read, so a reader may start with MTU-sized buffers and grow
// them when the stack sends bulk data. A super-segment whose segments are
// too small for the switch's GSO bounds (a peer's tiny MSS) is segmented
// here, over as many Reads as it takes.
func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.rmu.Lock()
	defer d.rmu.Unlock()
	n := d.seg.next(bufs, sizes, offset)
	if n == len(bufs) {
		d.tx.Add(uint64(n))
		return n, nil
	}
	ep := d.g.ep
	pkt := d.pending
	d.pending = nil
	if pkt == nil && n == 0 {
		if pkt = ep.ReadContext(d.g.ctx); pkt == nil {
			return 0, fmt.Errorf("%s: read: %w", d.Name(), net.ErrClosed)
		}
	} else if pkt == nil {
		pkt = ep.Read()
	}
	for pkt != nil {
		size := pkt.Size()
		buf := bufs[n]
		if size > len(buf)-offset {
			d.pending = pkt
			if n == 0 {
				return 0, fmt.Errorf("%s: read: a %d-byte frame: %w", d.Name(), size, io.ErrShortBuffer)
			}
			break
		}
		frame, smallMSS := frameOf(pkt, buf, offset)
		pkt.DecRef()
		if smallMSS > 0 {
			d.seg.start(frame, smallMSS)
			n += d.seg.next(bufs[n:], sizes[n:], offset)
			if n == len(bufs) {
				break
			}
			pkt = ep.Read()
			continue
		}
		sizes[n] = size
		if n++; n == len(bufs) {
			break
		}
		pkt = ep.Read()
	}
	d.tx.Add(uint64(n))
	return n, nil
}

// release drops the frame Read kept.
func (d *device) release() {
	d.rmu.Lock()
	defer d.rmu.Unlock()
	if d.pending != nil {
		d.pending.DecRef()
		d.pending = nil
	}
	d.seg = segmenter{}
}

// Write delivers frames to the stack (see WriteFrames).
func (d *device) Write(bufs [][]byte, offset int) (int, error) {
	return d.WriteFrames(packet.NewFrames(bufs, offset, make([]bool, len(bufs))))
}

// WriteFrames delivers frames to the stack, copying them. A partial
// checksum (offload metadata) is completed in the copy, and a TCP
// super-segment is handed over whole, as one large segment, which the
// stack takes (it does not check the MTU of what it receives). ICMP echo
// requests to outside addresses go to the echo egress instead.
func (d *device) WriteFrames(f packet.Frames) (int, error) {
	if d.g.stopping.Load() {
		return 0, fmt.Errorf("%s: write: %w", d.Name(), net.ErrClosed)
	}
	offset := f.Offset()
	d.wmu.Lock()
	defer d.wmu.Unlock()
	sent := 0
	for i := range f.Len() {
		buf := f.Buf(i)
		frame := buf[offset:]
		o := packet.OffloadOf(buf)
		if o.NeedsCsum() || o.IsGSO() {
			if cap(d.scratch) < len(frame) {
				d.scratch = make([]byte, len(frame))
			}
			frame = d.scratch[:copy(d.scratch[:len(frame)], frame)]
			if !fillChecksum(frame, o) {
				d.rxDropped.Add(1)
				continue
			}
		}
		if d.g.echoOut(frame) {
			sent++
			continue
		}
		if d.g.cfg.Egress != nil {
			d.syns.note(frame, d.g.Addr())
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		d.g.ep.InjectInbound(0, pkt)
		pkt.DecRef()
		sent++
	}
	d.rx.Add(uint64(sent))
	return sent, nil
}

// fillChecksum computes from scratch the TCP or UDP checksum of an IPv4
// frame whose metadata o asks for one (the field holds a partial sum, of
// a super-segment's whole length or of none), over the whole IP payload.
// It reports false for a frame it cannot complete.
func fillChecksum(frame []byte, _ packet.Offload) bool {
	eth := packet.Ethernet(frame)
	if len(frame) < packet.EthernetHeaderLen+packet.IPv4MinHeaderLen || eth.EtherType() != packet.EtherTypeIPv4 {
		return false
	}
	ip := packet.IPv4(frame[packet.EthernetHeaderLen:])
	if !ip.Valid() {
		return false
	}
	l4 := ip.Payload()
	var field int
	switch ip.Protocol() {
	case packet.ProtoTCP:
		field = 16
	case packet.ProtoUDP:
		field = 6
	default:
		return false
	}
	if len(l4) < field+2 {
		return false
	}
	src, dst := ip.Src(), ip.Dst()
	l4[field], l4[field+1] = 0, 0
	sum := packet.Fold(packet.Sum(l4, packet.PseudoHeaderSum(src, dst, ip.Protocol(), len(l4))))
	if sum == 0 && ip.Protocol() == packet.ProtoUDP {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(l4[field:], sum)
	return true
}

// frameOf copies pkt into buf at offset and sets buf's offload metadata:
// a TCP super-segment gets its GSO metadata, unless its MSS is below
// what the switch takes (packet.GSOMinSizeIPv4), which frameOf returns
// for the caller to segment it (0 otherwise). buf holds the frame.
func frameOf(pkt *stack.PacketBuffer, buf []byte, offset int) (frame []byte, smallMSS int) {
	frame = buf[offset : offset+pkt.Size()]
	// The views themselves, not AsSlices, which allocates a slice per
	// packet.
	vl, skip := pkt.AsViewList()
	copied := 0
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		copied += copy(frame[copied:], b[skip:])
		skip = 0
	}
	packet.ClearOffload(buf)
	gso := pkt.GSOOptions
	if gso.Type != stack.GSOTCPv4 {
		return frame, 0
	}
	if int(gso.MSS) < packet.GSOMinSizeIPv4 {
		return frame, int(gso.MSS)
	}
	l3 := packet.EthernetHeaderLen
	l4 := l3 + int(frame[l3]&0x0f)*4
	hdrLen := l4 + int(frame[l4+12]>>4)*4
	packet.OffloadOf(buf).Set(packet.OffloadNeedsCsum, packet.GSOTCPv4, hdrLen, int(gso.MSS), l4, int(gso.CsumOffset))
	return frame, 0
}
