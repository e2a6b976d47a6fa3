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
	scratch scratchPool // copies of frames whose checksum WriteFrames completes
	out     outState    // the synchronous output (output.go)
	syns    synTable    // the SYNs on their way to the TCP forwarder

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
	// No lock is held while the stack takes a frame: it may send in
	// reply at once, through the attached output, which may write to
	// this device again (see Attach).
	var scratch *[]byte
	defer func() {
		if scratch != nil {
			d.scratch.put(scratch)
		}
	}()
	sent := 0
	nat := d.g.natReplies()
	var natOut *natOut
	for i := range f.Len() {
		buf := f.Buf(i)
		if nat != nil && !f.Shared(i) && nat.reply(buf, offset, &natOut) {
			sent++
			continue
		}
		frame := buf[offset:]
		o := packet.OffloadOf(buf)
		if o.NeedsCsum() || o.IsGSO() {
			if scratch == nil {
				scratch = d.scratch.get()
			}
			if cap(*scratch) < len(frame) {
				*scratch = make([]byte, len(frame))
			}
			frame = (*scratch)[:copy((*scratch)[:len(frame)], frame)]
			if !fillChecksum(frame, o) {
				d.rxDropped.Add(1)
				continue
			}
		}
		if d.g.ttlExpired(frame) || d.g.echoOut(frame) {
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
	if natOut != nil {
		nat.flush(natOut, offset, nil)
	}
	d.rx.Add(uint64(sent))
	return sent, nil
}

// natReplies returns the NAT whose replies may reach g now: nil unless
// it has flows.
func (g *Gateway) natReplies() *NAT {
	if g.cfg.Egress == nil {
		return nil
	}
	if n := g.cfg.Egress.nat.Load(); n != nil && n.n.Load() > 0 {
		return n
	}
	return nil
}

// scratchPool holds the device's scratch buffers, one per concurrent
// WriteFrames that needs one.
type scratchPool struct {
	mu   sync.Mutex
	free []*[]byte
}

func (p *scratchPool) get() *[]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b
	}
	return new([]byte)
}

func (p *scratchPool) put(b *[]byte) {
	p.mu.Lock()
	p.free = append(p.free, b)
	p.mu.Unlock()
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
