//go:build linux

package netdev

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/internal/busypoll"

	"github.com/vxmesh/vxmesh/packet"
)

// TAPStats are a TAP device's counters since it was opened.
type TAPStats struct {
	RxFrames uint64 // frames passed up by Read
	RxBytes  uint64 // bytes of those frames (without the virtio-net header)
	// RxGSO counts the frames passed up that were TCP super-segments.
	RxGSO uint64
	// RxDropGSO counts frames dropped because their virtio-net header asked
	// for a segmentation offload that was not enabled (UFO, USO, or TSO on
	// a device whose offloads could not be switched on).
	RxDropGSO uint64
	// RxDropBad counts frames dropped because they were malformed (shorter
	// than the virtio-net header, bad checksum offsets, truncated).
	RxDropBad uint64
	TxFrames  uint64 // frames accepted by Write
	TxBytes   uint64 // bytes of those frames (without the virtio-net header)
	TxGSO     uint64 // of those, TCP super-segments passed on as such
	TxErrors  uint64 // frames the kernel refused
	// RxBusyPolled counts the reads that found frames by polling after
	// traffic (SetBusyPoll) rather than after a wake-up from the
	// netpoller.
	RxBusyPolled uint64
}

// tapFlags are the TUNSETIFF flags of every TAP vxmesh opens.
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// TAPOffloads are the offloads switched on with TUNSETOFFLOAD on every TAP
// vxmesh opens: the kernel may hand over frames with a partial TCP/UDP
// checksum (TUN_F_CSUM) and TCP super-segments of up to 64 KiB over IPv4
// and IPv6 (TUN_F_TSO4, TUN_F_TSO6). UDP segmentation (TUN_F_USO4/6) is
// not switched on: the tunnel only segments TCP.
const TAPOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6

// TAPBatchSize is the largest number of frames a TAP Read returns. It is
// smaller than packet.BatchSize because every buffer must hold a 64 KiB
// super-segment: a reader's batch is TAPBatchSize*packet.BufferSize, about
// 1 MiB per endpoint; with TSO a batch stops once it holds TAPBatchBytes.
const TAPBatchSize = 16

// TAPBatchBytes ends a TAP Read's batch early: once the frames read hold
// this many bytes (four 64 KiB super-segments), the batch goes to the
// switch, so that what a reader copied in is written out while it is
// still in the CPU's cache rather than after a whole megabyte more
// (measured on the one-host stream: 9 interleaved pairs, median
// throughput +5%, daemon CPU per GB -4%; docs/architecture.md).
const TAPBatchBytes = 256 << 10

// TAP is a Linux TAP device opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR. It
// implements Device. Read and Write may run concurrently with each other and
// with Close; concurrent Reads (and concurrent Writes) are serialized.
type TAP struct {
	name     string
	file     *os.File
	rc       syscall.RawConn
	offloads int // TUN_F_* flags in effect

	rmu sync.Mutex // guards the read state below
	rx  struct {
		bufs   [][]byte
		sizes  []int
		offset int
		n      int
		err    error
		frames uint64
		bytes  uint64
		gso    uint64
		iov    [2]unix.Iovec // metadata slot, frame; preallocated for readv
	}
	readFn func(fd uintptr) bool // bound once so Read does not allocate
	// rxBudget ends a read batch once its frames hold this many bytes
	// (TAPBatchBytes; smaller in tests).
	rxBudget uint64
	waitFn   func(fd uintptr) bool // bound once so WaitRead does not allocate
	pfd      [1]unix.PollFd        // WaitRead's readability check
	// poll keeps Read and WaitRead polling after traffic (SetBusyPoll);
	// used by the one reader only.
	poll *busypoll.Window

	wmu sync.Mutex // guards the write state below
	tx  struct {
		bufs   [][]byte
		offset int
		i      int
		n      int
		err    error
		bytes  uint64
		gso    uint64
		iov    [2]unix.Iovec
	}
	writeFn func(fd uintptr) bool

	closed atomic.Bool

	rxFrames, rxBytes, rxGSO, rxDropGSO, rxDropBad atomic.Uint64
	txFrames, txBytes, txGSO, txErrors             atomic.Uint64
}

// CreateTAP creates a TAP device in the calling thread's network namespace
// and returns it opened. An empty name lets the kernel pick one (Name
// returns the real name); a non-empty name must not exist yet. With
// persist the device outlives the file descriptor (see SetPersist) and can
// be reopened with OpenTAP or OpenTAPInNetns.
func CreateTAP(name string, persist bool) (*TAP, error) {
	flags := uint16(tapFlags)
	if name != "" {
		flags |= unix.IFF_TUN_EXCL
	}
	fd, realName, offloads, err := openTUN(name, flags)
	if err != nil {
		return nil, err
	}
	if persist {
		if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("tap %q: set persistent: %w", realName, err)
		}
	}
	return newTAP(fd, realName, offloads)
}

// OpenTAP reopens the existing persistent TAP device name in the calling
// thread's network namespace.
func OpenTAP(name string) (*TAP, error) {
	fd, offloads, err := openExistingTUN(name)
	if err != nil {
		return nil, err
	}
	return newTAP(fd, name, offloads)
}

// OpenTAPInNetns reopens the existing persistent TAP device name inside the
// network namespace at nsPath (a /proc/PID/ns/net or /run/netns/NAME path).
// The returned device keeps working from any namespace. The caller's thread
// is not touched: the namespace switch happens on a dedicated locked thread
// that is discarded if it cannot be switched back.
func OpenTAPInNetns(nsPath, name string) (*TAP, error) {
	return tapInNetns(nsPath, name, func() (int, int, error) { return openExistingTUN(name) })
}

// CreateTAPInNetns creates the TAP device name inside the network
// namespace at nsPath, as CreateTAP does in the caller's (name must not
// exist there yet), on a dedicated locked thread as OpenTAPInNetns. A
// device made where it is used is never moved between namespaces: a move
// waits on the kernel's RCU grace periods under its rtnl lock, which
// every namespace of the machine shares.
func CreateTAPInNetns(nsPath, name string, persist bool) (*TAP, error) {
	if name == "" {
		return nil, errors.New("tap: empty interface name")
	}
	return tapInNetns(nsPath, name, func() (int, int, error) {
		fd, _, offloads, err := openTUN(name, tapFlags|unix.IFF_TUN_EXCL)
		if err != nil {
			return -1, 0, err
		}
		if persist {
			if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
				unix.Close(fd)
				return -1, 0, fmt.Errorf("tap %q: set persistent: %w", name, err)
			}
		}
		return fd, offloads, nil
	})
}

// tapInNetns runs open (which returns a TAP descriptor and its offloads)
// on a locked thread switched into the namespace at nsPath, and wraps the
// descriptor.
func tapInNetns(nsPath, name string, open func() (fd, offloads int, err error)) (*TAP, error) {
	ns, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %q: open netns %q: %w", name, nsPath, err)
	}
	defer unix.Close(ns)

	type result struct {
		fd, offloads int
		err          error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, 0, fmt.Errorf("tap %q: open current netns: %w", name, err)}
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, 0, fmt.Errorf("tap %q: enter netns %q: %w", name, nsPath, err)}
			return
		}
		fd, offloads, err := open()
		if err != nil {
			err = fmt.Errorf("netns %q: %w", nsPath, err)
		}
		if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
			// Leave the thread locked: the runtime destroys it when this
			// goroutine exits instead of reusing it in the wrong netns.
			if fd >= 0 {
				unix.Close(fd)
			}
			ch <- result{-1, 0, fmt.Errorf("tap %q: return from netns %q: %w", name, nsPath, serr)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{fd, offloads, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	return newTAP(r.fd, name, r.offloads)
}

// openTUN opens /dev/net/tun, attaches it to name with flags and switches
// the offloads on; it returns the TUN_F_* flags in effect.
func openTUN(name string, flags uint16) (fd int, realName string, offloads int, err error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return -1, "", 0, fmt.Errorf("tap %q: %w", name, err)
	}
	fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, "", 0, fmt.Errorf("tap %q: open /dev/net/tun: %w", name, err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EBUSY) && flags&unix.IFF_TUN_EXCL != 0 {
			return -1, "", 0, fmt.Errorf("tap %q: interface already exists", name)
		}
		return -1, "", 0, fmt.Errorf("tap %q: TUNSETIFF: %w", name, err)
	}
	realName = ifr.Name()
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, VirtioNetHdrLen); err != nil {
		unix.Close(fd)
		return -1, "", 0, fmt.Errorf("tap %q: TUNSETVNETHDRSZ: %w", realName, err)
	}
	// Checksum and TCP segmentation offload: the container's kernel hands
	// over super-segments and partial checksums, which go to other TAPs as
	// they are and are completed/segmented by the tunnel. A kernel that
	// refuses them gets complete frames only.
	offloads = TAPOffloads
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, offloads); err != nil {
		offloads = 0
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
			unix.Close(fd)
			return -1, "", 0, fmt.Errorf("tap %q: TUNSETOFFLOAD: %w", realName, err)
		}
	}
	return fd, realName, offloads, nil
}

// openExistingTUN attaches to the persistent TAP name. TUNSETIFF creates a
// device that does not exist, so a result that is not persistent was just
// created by us: it is destroyed again by closing the descriptor.
func openExistingTUN(name string) (int, int, error) {
	if name == "" {
		return -1, 0, errors.New("tap: empty interface name")
	}
	fd, _, offloads, err := openTUN(name, tapFlags)
	if err != nil {
		return -1, 0, err
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		err = unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("tap %q: TUNGETIFF: %w", name, err)
	}
	if ifr.Uint16()&unix.IFF_PERSIST == 0 {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("tap %q: no such persistent TAP device", name)
	}
	return fd, offloads, nil
}

func newTAP(fd int, name string, offloads int) (*TAP, error) {
	f := os.NewFile(uintptr(fd), "/dev/net/tun:"+name)
	if f == nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %q: invalid descriptor", name)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("tap %q: %w", name, err)
	}
	t := &TAP{name: name, file: f, rc: rc, offloads: offloads, rxBudget: TAPBatchBytes}
	t.readFn = t.readBatch
	t.waitFn = t.readable
	t.writeFn = t.writeBatch
	return t, nil
}

// Name returns the interface name the device had when it was opened (a
// later rename, e.g. inside a container's namespace, is not tracked).
func (t *TAP) Name() string { return t.name }

// BatchSize returns the largest number of frames one Read returns
// (TAPBatchSize).
func (t *TAP) BatchSize() int { return TAPBatchSize }

// Offloads returns the TUN_F_* offload flags in effect: TAPOffloads, or 0
// if the kernel refused them.
func (t *TAP) Offloads() int { return t.offloads }

// Close closes the file descriptor; a blocked Read returns an error that
// matches os.ErrClosed. A persistent device stays in its namespace, any
// other one is destroyed by the kernel.
func (t *TAP) Close() error {
	t.closed.Store(true)
	return t.file.Close()
}

// pollErr turns an error of the file's poller into one naming the device;
// after Close it matches os.ErrClosed.
func (t *TAP) pollErr(op string, err error) error {
	if t.closed.Load() {
		return fmt.Errorf("tap %q: %s: %w", t.name, op, os.ErrClosed)
	}
	return fmt.Errorf("tap %q: %s: %w", t.name, op, err)
}

// SetPersist sets or clears the device's persistent flag. A persistent
// device survives Close (and daemon restarts); clearing the flag makes
// the next Close destroy it.
func (t *TAP) SetPersist(persist bool) error {
	v := 0
	if persist {
		v = 1
	}
	var ierr error
	if err := t.rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, v)
	}); err != nil {
		return fmt.Errorf("tap %q: %w", t.name, err)
	}
	if ierr != nil {
		return fmt.Errorf("tap %q: TUNSETPERSIST: %w", t.name, ierr)
	}
	return nil
}

// Stats returns a snapshot of the device's counters.
func (t *TAP) Stats() TAPStats {
	return TAPStats{
		RxFrames:  t.rxFrames.Load(),
		RxBytes:   t.rxBytes.Load(),
		RxGSO:     t.rxGSO.Load(),
		RxDropGSO: t.rxDropGSO.Load(),
		RxDropBad: t.rxDropBad.Load(),
		TxFrames:  t.txFrames.Load(),
		TxBytes:   t.txBytes.Load(),
		TxGSO:     t.txGSO.Load(),
		TxErrors:  t.txErrors.Load(),

		RxBusyPolled: t.poll.Caught(),
	}
}

// Read implements Device. It blocks in the Go netpoller until at least one
// frame is available, then reads frames until the kernel queue is empty,
// min(len(bufs), BatchSize()) frames were read or they hold TAPBatchBytes. Each frame is read with
// one readv(2): its virtio-net header lands in the metadata slot
// bufs[i][0:VirtioNetHdrLen], the frame at bufs[i][offset:]. The metadata is
// passed on as the kernel wrote it (partial checksums are not completed,
// TCP super-segments are not split); frames asking for an offload that was
// not switched on, or whose checksum offsets lie outside the frame, are
// dropped and counted.
func (t *TAP) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if offset < VirtioNetHdrLen {
		return 0, fmt.Errorf("tap %q: read offset %d smaller than the virtio-net header", t.name, offset)
	}
	n := min(len(bufs), len(sizes), TAPBatchSize)
	if n == 0 {
		return 0, nil
	}
	t.rmu.Lock()
	defer t.rmu.Unlock()
	r := &t.rx
	r.bufs, r.sizes, r.offset, r.n, r.err = bufs[:n], sizes, offset, 0, nil
	r.frames, r.bytes, r.gso = 0, 0, 0
	err := t.rc.Read(t.readFn)
	got, rerr := r.n, r.err
	r.bufs, r.sizes, r.err = nil, nil, nil
	r.iov = [2]unix.Iovec{} // do not keep the caller's buffers reachable
	if r.frames > 0 {
		t.rxFrames.Add(r.frames)
		t.rxBytes.Add(r.bytes)
		if r.gso > 0 {
			t.rxGSO.Add(r.gso)
		}
	}
	if got > 0 {
		t.poll.Seen()
		return got, nil
	}
	if err != nil {
		return 0, t.pollErr("read", err)
	}
	return 0, rerr
}

// WaitRead implements ReadWaiter: it blocks in the Go netpoller until the
// device has a frame to read, without reading it.
func (t *TAP) WaitRead() error {
	if err := t.rc.Read(t.waitFn); err != nil {
		return t.pollErr("read", err)
	}
	return nil
}

// readable is the RawConn.Read callback of WaitRead: it returns false to
// wait while the descriptor has nothing to read. An error of poll(2)
// counts as readable, so that Read reports what is wrong.
func (t *TAP) readable(fd uintptr) bool {
	for {
		t.pfd[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
		n, err := unix.Poll(t.pfd[:], 0)
		if err != nil && err != unix.EINTR || n > 0 {
			return true
		}
		if t.closed.Load() || !t.poll.Again() {
			return false
		}
	}
}

// SetBusyPoll makes the reader keep polling the device for d after each
// frame it read before it blocks in the netpoller (internal/busypoll); 0,
// the default, blocks at once. Call it before the first Read.
func (t *TAP) SetBusyPoll(d time.Duration) {
	t.rmu.Lock()
	t.poll = busypoll.New(d)
	t.rmu.Unlock()
}

// gsoAccepted reports whether a frame with GSO type typ may be passed up.
func (t *TAP) gsoAccepted(typ uint8) bool {
	switch typ &^ packet.GSOECN {
	case packet.GSOTCPv4:
		return t.offloads&unix.TUN_F_TSO4 != 0
	case packet.GSOTCPv6:
		return t.offloads&unix.TUN_F_TSO6 != 0
	}
	return false
}

// readv reads one frame into the slot and frame areas described by iov.
func readv(fd uintptr, iov *[2]unix.Iovec) (int, error) {
	m, _, errno := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&iov[0])), 2)
	if errno != 0 {
		return 0, errno
	}
	return int(m), nil
}

// writev writes one frame from the slot and frame areas described by iov.
func writev(fd uintptr, iov *[2]unix.Iovec) (int, error) {
	m, _, errno := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), 2)
	if errno != 0 {
		return 0, errno
	}
	return int(m), nil
}

// readBatch is the RawConn.Read callback: it returns false to wait for
// readability only while nothing has been read yet.
func (t *TAP) readBatch(fd uintptr) bool {
	r := &t.rx
	for r.n < len(r.bufs) && r.bytes < t.rxBudget {
		b := r.bufs[r.n]
		if len(b) <= r.offset {
			r.err = fmt.Errorf("tap %q: read buffer %d has no room behind offset %d", t.name, r.n, r.offset)
			return true
		}
		r.iov[0].Base, r.iov[1].Base = &b[0], &b[r.offset]
		r.iov[0].SetLen(VirtioNetHdrLen)
		r.iov[1].SetLen(len(b) - r.offset)
		m, err := readv(fd, &r.iov)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if r.n == 0 && !t.closed.Load() && t.poll.Again() {
				continue
			}
			return r.n > 0
		case err == unix.EINVAL || err == unix.EFAULT || err == unix.EMSGSIZE:
			// The kernel consumed a frame it could not deliver into this
			// buffer; count it and go on with the next one.
			t.rxDropBad.Add(1)
			continue
		case err != nil:
			r.err = fmt.Errorf("tap %q: read: %w", t.name, err)
			return true
		}
		if m < VirtioNetHdrLen+packet.EthernetHeaderLen {
			t.rxDropBad.Add(1)
			continue
		}
		size := m - VirtioNetHdrLen
		o := packet.OffloadOf(b)
		if o.IsGSO() {
			if !t.gsoAccepted(o.GSOType()) {
				t.rxDropGSO.Add(1)
				continue
			}
			r.gso++
		}
		if o.NeedsCsum() && (o.CsumStart() >= size || o.CsumStart()+o.CsumOffset()+2 > size) {
			t.rxDropBad.Add(1)
			continue
		}
		r.sizes[r.n] = size
		r.n++
		r.frames++
		r.bytes += uint64(size)
	}
	return true
}

// WriteFrames implements vswitch.Sink with Write, which hands the frames
// to the kernel unchanged.
func (t *TAP) WriteFrames(f packet.Frames) (int, error) { return t.Write(f.Bufs(), f.Offset()) }

// Write implements Device. Each frame bufs[i][offset:] is written with one
// writev(2) behind its metadata slot bufs[i][0:VirtioNetHdrLen], which the
// kernel takes as the frame's virtio-net header: a super-segment or a
// partial checksum is handed to the kernel as such (like veth does), a
// cleared slot sends a complete frame. Nothing is copied or modified. A
// refused frame is counted and skipped; the first refusal is returned
// along with the number of frames accepted.
func (t *TAP) Write(bufs [][]byte, offset int) (int, error) {
	if offset < VirtioNetHdrLen {
		return 0, fmt.Errorf("tap %q: write offset %d smaller than the virtio-net header", t.name, offset)
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	t.wmu.Lock()
	defer t.wmu.Unlock()
	w := &t.tx
	w.bufs, w.offset, w.i, w.n, w.err, w.bytes, w.gso = bufs, offset, 0, 0, nil, 0, 0
	err := t.rc.Write(t.writeFn)
	n, werr := w.n, w.err
	w.bufs, w.err = nil, nil
	w.iov = [2]unix.Iovec{}
	if n > 0 {
		t.txFrames.Add(uint64(n))
		t.txBytes.Add(w.bytes)
		if w.gso > 0 {
			t.txGSO.Add(w.gso)
		}
	}
	if err != nil {
		// The device was closed: everything not yet written is refused.
		t.txErrors.Add(uint64(len(bufs) - w.i))
		if werr == nil {
			werr = t.pollErr("write", err)
		}
	}
	return n, werr
}

// writeBatch is the RawConn.Write callback; it returns false (wait for
// writability) only when the kernel says EAGAIN.
func (t *TAP) writeBatch(fd uintptr) bool {
	w := &t.tx
	for ; w.i < len(w.bufs); w.i++ {
		b := w.bufs[w.i]
		if len(b) <= w.offset {
			t.txErrors.Add(1)
			if w.err == nil {
				w.err = fmt.Errorf("tap %q: write buffer %d has no frame behind offset %d", t.name, w.i, w.offset)
			}
			continue
		}
		w.iov[0].Base, w.iov[1].Base = &b[0], &b[w.offset]
		w.iov[0].SetLen(VirtioNetHdrLen)
		w.iov[1].SetLen(len(b) - w.offset)
		for {
			m, err := writev(fd, &w.iov)
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				return false
			}
			if err != nil {
				t.txErrors.Add(1)
				if w.err == nil {
					w.err = fmt.Errorf("tap %q: write: %w", t.name, err)
				}
			} else {
				w.n++
				w.bytes += uint64(m - VirtioNetHdrLen)
				if b[1] != packet.GSONone {
					w.gso++
				}
			}
			break
		}
	}
	return true
}

var _ Device = (*TAP)(nil)
