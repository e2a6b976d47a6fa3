package gateway

import (
	"encoding/binary"
	"fmt"
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
	rmu     sync.Mutex // one reader at a time
	wmu     sync.Mutex // guards scratch
	scratch []byte

	rx, tx, rxDropped atomic.Uint64
}

func (d *device) Name() string   { return "gw-" + d.g.cfg.Name }
func (d *device) BatchSize() int { return packet.BatchSize }
func (d *device) Close() error   { d.g.cancel(); return nil }

// Read blocks for the stack's next frame, then takes whatever else is
// queued, up to len(bufs). Frames are complete (no offload).
func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.rmu.Lock()
	defer d.rmu.Unlock()
	ep := d.g.ep
	pkt := ep.ReadContext(d.g.ctx)
	if pkt == nil {
		return 0, fmt.Errorf("%s: read: %w", d.Name(), net.ErrClosed)
	}
	n := 0
	for pkt != nil {
		packet.ClearOffload(bufs[n])
		size := 0
		for _, s := range pkt.AsSlices() {
			size += copy(bufs[n][offset+size:], s)
		}
		pkt.DecRef()
		sizes[n] = size
		if n++; n == len(bufs) {
			break
		}
		pkt = ep.Read()
	}
	d.tx.Add(uint64(n))
	return n, nil
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
	if d.g.ctx.Err() != nil {
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
