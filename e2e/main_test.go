// Package e2e holds end-to-end tests that drive the vxmesh CLI against real
// daemons, TAP devices and network namespaces built by internal/testbed.
//
// They need root, iproute2, util-linux (nsenter) and iputils-ping; without
// them every test skips, unless testenv.RequireEnv=1 (set by `make e2e`),
// which turns a skip into a failure so CI cannot pass without running them.
// The vxmesh binary is $VXMESH_BIN or, if unset, built from ./cmd/vxmesh.
//
// The test binary doubles as a byte-exact TCP sender and receiver inside
// containers: `vxmesh exec c1 -- <test binary> vxmesh-e2e-helper send ...`.
package e2e

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
)

// helperArg, as the first argument, makes the test binary a TCP helper.
const helperArg = "vxmesh-e2e-helper"

// suite is fixed by TestMain before any test runs and read-only after.
var suite struct {
	bin        string // vxmesh binary
	self       string // this test binary
	prefix     string // prefix of every namespace this run creates
	skipReason string // why tests cannot run here
	// stopping is set on SIGINT/SIGTERM so no test starts anything new.
	stopping atomic.Bool
}

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == helperArg {
		os.Exit(helperMain(os.Args[2:]))
	}
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if f := flag.Lookup("test.list"); f != nil && f.Value.String() != "" {
		return m.Run()
	}
	suite.prefix = "vxe" + testbed.RandomID(2)
	if err := prereqs(); err != nil {
		suite.skipReason = err.Error()
		return m.Run()
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	suite.self = self
	bin, cleanup, err := vxmeshBinary()
	if err != nil {
		suite.skipReason = err.Error()
		return m.Run()
	}
	defer cleanup()
	suite.bin = bin
	// A race-enabled vxmesh (as `make e2e` builds) sleeps 1 s at every exit
	// by default, which would make each CLI call take a second.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}

	// Ctrl-C or a timeout kill: remove every namespace (and so every
	// process and interface) this run made before exiting.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		suite.stopping.Store(true)
		fmt.Fprintf(os.Stderr, "e2e: %v: cleaning up %s*\n", s, suite.prefix)
		// Tests keep running meanwhile and may create more: repeat until
		// nothing has appeared for a while (bounded to 3 s).
		quiet := 0
		for i := 0; i < 60 && quiet < 5; i++ {
			if left, _ := testbed.ListNetns(suite.prefix); len(left) == 0 {
				quiet++
			} else {
				quiet = 0
				_ = testbed.Cleanup(suite.prefix)
			}
			time.Sleep(50 * time.Millisecond)
		}
		cleanup()
		os.Exit(130)
	}()
	code := m.Run()
	signal.Stop(sigs)
	if err := testbed.Cleanup(suite.prefix); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cleanup:", err)
	}
	return code
}

func prereqs() error {
	if err := testbed.CheckPrereqs(); err != nil {
		return err
	}
	for _, c := range []string{"ping", "ss", "unshare"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("missing %s (apt-get install iputils-ping iproute2 util-linux)", c)
		}
	}
	return nil
}

// vxmeshBinary returns $VXMESH_BIN, or builds ./cmd/vxmesh into a
// temporary directory.
func vxmeshBinary() (string, func(), error) {
	if p := os.Getenv("VXMESH_BIN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", func() {}, err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", func() {}, fmt.Errorf("VXMESH_BIN: %w", err)
		}
		return abs, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "vxe2e-bin")
	if err != nil {
		return "", func() {}, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	bin := filepath.Join(dir, "vxmesh")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/vxmesh/vxmesh/cmd/vxmesh").CombinedOutput()
	if err != nil {
		cleanup()
		return "", func() {}, fmt.Errorf("building vxmesh (set VXMESH_BIN to skip): %v: %s", err, out)
	}
	return bin, cleanup, nil
}

// helperMain implements the in-container TCP helper:
//
//	recv ADDR          accept one connection, print "<bytes> <sha256>"
//	send ADDR N SEED [BPS]  send N pseudo-random bytes (at most BPS bytes
//	                        per second), print "<bytes> <sha256>"
//
// and the service helpers of serviceHelper.
func helperMain(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "helper: want recv ADDR | send ADDR N SEED")
		return 2
	}
	var err error
	switch args[0] {
	case "recv":
		err = helperRecv(args[1])
	case "get":
		err = helperGet(args[1])
	case "udpprobe":
		err = helperUDPProbe(args[1])
	case "send":
		if len(args) != 4 && len(args) != 5 {
			err = fmt.Errorf("send: want ADDR N SEED [BPS]")
			break
		}
		n, err1 := strconv.ParseInt(args[2], 10, 64)
		seed, err2 := strconv.ParseUint(args[3], 10, 64)
		var bps int64
		var err3 error
		if len(args) == 5 {
			bps, err3 = strconv.ParseInt(args[4], 10, 64)
		}
		if err1 != nil || err2 != nil || err3 != nil {
			err = fmt.Errorf("send: bad N, SEED or BPS")
			break
		}
		err = helperSend(args[1], n, seed, bps)
	default:
		err = serviceHelper(args)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

func helperRecv(addr string) error {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(60 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return err
	}
	fmt.Printf("%d %x\n", n, h.Sum(nil))
	return nil
}

func helperSend(addr string, n int64, seed uint64, bps int64) error {
	var c net.Conn
	var err error
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err = net.DialTimeout("tcp4", addr, 2*time.Second)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	var src io.Reader = io.LimitReader(rand.NewChaCha8(seedBytes(seed)), n)
	if bps > 0 {
		src = &pacedReader{r: src, bps: bps, start: time.Now()}
	}
	sent, err := io.Copy(io.MultiWriter(c, h), src)
	if err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	// Wait for the receiver to close, so all bytes are acknowledged.
	_, _ = io.Copy(io.Discard, c)
	fmt.Printf("%d %x\n", sent, h.Sum(nil))
	return nil
}

// pacedReader reads at most bps bytes per second from r.
type pacedReader struct {
	r     io.Reader
	bps   int64
	start time.Time
	n     int64
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if len(b) > 16<<10 {
		b = b[:16<<10]
	}
	if due := p.start.Add(time.Duration(p.n * int64(time.Second) / p.bps)); time.Now().Before(due) {
		time.Sleep(time.Until(due))
	}
	k, err := p.r.Read(b)
	p.n += int64(k)
	return k, err
}

func seedBytes(seed uint64) [32]byte {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	return b
}
