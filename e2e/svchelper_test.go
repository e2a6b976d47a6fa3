package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The service helpers run inside containers as the test binary with
// helperArg first (see helperMain):
//
//	serve NAME PORT [FILE]    answer TCP and UDP on PORT: a TCP connection
//	                          gets "NAME PEER" at once and again for every
//	                          line it sends (the line "reset" resets it
//	                          instead, "bye" closes it); a UDP datagram
//	                          gets "NAME PEER".
//	                          With FILE, also answer HTTP GET /health on
//	                          PORT+1: 200, or 503 while FILE exists (the
//	                          test flips a backend's health with it)
//	conns ADDR N PAR [DUR]    open N TCP connections (or as many as fit in
//	                          DUR), PAR at a time, read the first line of
//	                          each; print a connReport as JSON
//	idle ADDR WAIT            open one connection, read its line, stay idle
//	                          for WAIT, send a line, read the answer; print
//	                          an idleReport as JSON
//	udp ADDR DUR EVERY        from one socket, send a datagram every EVERY
//	                          for DUR; print who answered as answers come
//	echo PORT                 echo every UDP datagram on PORT whole (any
//	                          size); accept and close TCP on PORT (so the
//	                          test can wait until it listens)
//	udpecho ADDR SIZE         send a SIZE-byte datagram to ADDR until it
//	                          comes back whole (5 tries); print "echoed SIZE"
//	proxy NAME PORT           answer TCP on PORT: read a connection's first
//	                          28 bytes (a PROXY v2 header of TCP/IPv4) and
//	                          answer "NAME PEER HEX" with them in hex
//	hold ADDR N PAR [WAIT]    open N TCP connections, PAR dials at a time,
//	                          read the first line of each (within WAIT,
//	                          default 5s) and keep them
//	                          all open; print "held K" (K answered), wait
//	                          for stdin to close, close them all and
//	                          print a connReport as JSON
//
// PEER is the address the backend saw the connection come from: with no
// SNAT, the client's own.

// connReport is what conns prints.
type connReport struct {
	// Counts is the number of connections answered by each backend name.
	Counts map[string]int `json:"counts"`
	// Peers are the distinct client addresses the backends saw.
	Peers []string `json:"peers"`
	// Errors counts the connections that could not be made (dial: what
	// a client sees as a connect error), FirstErr says how the first
	// failed. Resets counts connections that were made but reset before
	// the backend's line arrived (a backend killed while it held them),
	// including those reset so soon after the handshake that Go's dial
	// returns the reset.
	Errors   int    `json:"errors"`
	FirstErr string `json:"first_err,omitempty"`
	Resets   int    `json:"resets"`
	ResetErr string `json:"reset_err,omitempty"`
}

// idleReport is what idle prints.
type idleReport struct {
	First string `json:"first"` // the backend that answered on connect
	After string `json:"after"` // the backend that answered after WAIT
	Err   string `json:"err,omitempty"`
}

// serviceHelper runs the service helper modes.
func serviceHelper(args []string) error {
	switch {
	case args[0] == "serve" && len(args) == 3:
		return helperServe(args[1], args[2])
	case args[0] == "serve" && len(args) == 4:
		if err := serveHealth(args[2], args[3]); err != nil {
			return err
		}
		return helperServe(args[1], args[2])
	case args[0] == "conns" && (len(args) == 4 || len(args) == 5):
		n, err1 := strconv.Atoi(args[2])
		par, err2 := strconv.Atoi(args[3])
		var dur time.Duration
		var err3 error
		if len(args) == 5 {
			dur, err3 = time.ParseDuration(args[4])
		}
		if err1 != nil || err2 != nil || err3 != nil || par < 1 {
			return fmt.Errorf("conns: bad N, PAR or DUR")
		}
		return printJSON(helperConns(args[1], n, par, dur))
	case args[0] == "idle" && len(args) == 3:
		wait, err := time.ParseDuration(args[2])
		if err != nil {
			return err
		}
		return printJSON(helperIdle(args[1], wait))
	case args[0] == "udp" && len(args) == 4:
		dur, err1 := time.ParseDuration(args[2])
		every, err2 := time.ParseDuration(args[3])
		if err1 != nil || err2 != nil || every <= 0 {
			return fmt.Errorf("udp: bad DUR or EVERY")
		}
		return helperUDP(args[1], dur, every)
	case args[0] == "echo" && len(args) == 2:
		return helperEcho(args[1])
	case args[0] == "udpecho" && len(args) == 3:
		size, err := strconv.Atoi(args[2])
		if err != nil || size < 1 || size > 65507 {
			return fmt.Errorf("udpecho: bad SIZE %q", args[2])
		}
		c, err := net.Dial("udp4", args[1])
		if err != nil {
			return err
		}
		defer c.Close()
		if err := udpEcho(c, size); err != nil {
			return err
		}
		fmt.Println("echoed", size)
		return nil
	case args[0] == "proxy" && len(args) == 3:
		return helperProxy(args[1], args[2])
	case args[0] == "hold" && (len(args) == 4 || len(args) == 5):
		n, err1 := strconv.Atoi(args[2])
		par, err2 := strconv.Atoi(args[3])
		wait, err3 := lineWait, error(nil)
		if len(args) == 5 {
			wait, err3 = time.ParseDuration(args[4])
		}
		if err1 != nil || err2 != nil || err3 != nil || n < 1 || par < 1 {
			return fmt.Errorf("hold: bad N, PAR or WAIT")
		}
		return helperHold(args[1], n, par, wait)
	}
	return fmt.Errorf("unknown mode or arguments %q", args)
}

// raiseNoFile makes sure the process may open need descriptors, raising
// its soft RLIMIT_NOFILE (up to the hard limit) if it is lower.
func raiseNoFile(need uint64) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur >= need {
		return nil
	}
	if rl.Max < need {
		return fmt.Errorf("open-files limit: hard limit %d, need %d", rl.Max, need)
	}
	rl.Cur = need
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
}

// helperHold opens n connections to addr, par dials at a time, and holds
// every one that answered open until stdin closes; then it closes them
// all and prints the report.
func helperHold(addr string, n, par int, wait time.Duration) error {
	if err := raiseNoFile(uint64(n) + 100); err != nil {
		return err
	}
	held := make([]net.Conn, 0, n)
	r := dialAll(addr, n, par, 0, wait, func(c net.Conn) {
		_ = c.SetDeadline(time.Time{})
		held = append(held, c)
	})
	fmt.Printf("held %d\n", len(held))
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range held {
		c.Close()
	}
	return printJSON(r)
}

// count adds one connection's outcome to the report.
func (r *connReport) count(name, peer string, err error) {
	var de errDial
	switch {
	case errors.As(err, &de):
		if r.Errors == 0 {
			r.FirstErr = err.Error()
		}
		r.Errors++
	case err != nil:
		if r.Resets == 0 {
			r.ResetErr = err.Error()
		}
		r.Resets++
	default:
		r.Counts[name]++
		if !containsStr(r.Peers, peer) {
			r.Peers = append(r.Peers, peer)
		}
	}
}

func printJSON(v any) error {
	return json.NewEncoder(os.Stdout).Encode(v)
}

// helperServe answers on PORT over TCP and UDP until killed.
func helperServe(name, port string) error {
	// Best effort: enough descriptors for thousands of connections held
	// at once (hold); a lower hard limit only fails such a test.
	_ = raiseNoFile(16384)
	ln, err := net.Listen("tcp4", ":"+port)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp4", ":"+port)
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			peer := from.(*net.UDPAddr).IP.String()
			_, _ = pc.WriteTo([]byte(name+" "+peer+"\n"), from)
		}
	}()
	fmt.Println("serving", name, port)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			line := name + " " + c.RemoteAddr().(*net.TCPAddr).IP.String() + "\n"
			if _, err := c.Write([]byte(line)); err != nil {
				return
			}
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				if sc.Text() == "reset" {
					_ = c.(*net.TCPConn).SetLinger(0)
					return
				}
				if sc.Text() == "bye" {
					return // the backend closes first: its side ends in TIME-WAIT
				}
				if _, err := c.Write([]byte(line)); err != nil {
					return
				}
			}
		}()
	}
}

// helperProxy answers each TCP connection on port with its first 28
// bytes in hex, after the serve helper's "NAME PEER".
func helperProxy(name, port string) error {
	ln, err := net.Listen("tcp4", ":"+port)
	if err != nil {
		return err
	}
	fmt.Println("serving", name, port)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			head := make([]byte, 28)
			if _, err := io.ReadFull(c, head); err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s %x\n", name, c.RemoteAddr().(*net.TCPAddr).IP, head)
		}()
	}
}

// serveHealth answers GET /health on port+1 with 200, or 503 while file
// exists, in the background.
func serveHealth(port, file string) error {
	p, err := strconv.Atoi(port)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", ":"+strconv.Itoa(p+1))
	if err != nil {
		return err
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := os.Stat(file); r.URL.Path != "/health" || err == nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	go func() { _ = http.Serve(ln, h) }()
	return nil
}

// lineWait bounds a helper's connect and its wait for the first line.
const lineWait = 5 * time.Second

// errDial marks a failed connect.
type errDial struct{ error }

// dialLine connects to addr and reads the backend's first line; a failed
// connect is an errDial.
func dialLine(addr string, wait time.Duration) (name, peer string, c net.Conn, err error) {
	c, err = net.DialTimeout("tcp4", addr, wait)
	if errors.Is(err, syscall.ECONNRESET) {
		// Go's connect reads the socket's error after the handshake
		// completes: a reset that follows the SYN-ACK at once (a
		// backend killed with the connection in its accept queue)
		// surfaces here, though the connection was made.
		return "", "", nil, err
	}
	if err != nil {
		return "", "", nil, errDial{err}
	}
	_ = c.SetDeadline(time.Now().Add(wait))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return "", "", nil, err
	}
	name, peer, _ = strings.Cut(strings.TrimSpace(line), " ")
	return name, peer, c, nil
}

// helperConns opens n connections (or, with dur, as many as fit in it),
// par at a time, and closes each once it answered.
func helperConns(addr string, n, par int, dur time.Duration) connReport {
	return dialAll(addr, n, par, dur, lineWait, func(c net.Conn) { c.Close() })
}

// dialAll opens n connections to addr (or, with dur > 0, as many as fit
// in dur), par dials at a time, counts each outcome and hands every
// connection that answered to use (called with one lock held).
func dialAll(addr string, n, par int, dur, wait time.Duration, use func(net.Conn)) connReport {
	r := connReport{Counts: map[string]int{}, Peers: []string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan struct{})
	stop := time.Now().Add(dur)
	go func() {
		for i := 0; dur > 0 || i < n; i++ {
			if dur > 0 && time.Now().After(stop) {
				break
			}
			next <- struct{}{}
		}
		close(next)
	}()
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				name, peer, c, err := dialLine(addr, wait)
				mu.Lock()
				r.count(name, peer, err)
				if err == nil {
					use(c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return r
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// helperIdle keeps one connection idle for wait, then uses it.
func helperIdle(addr string, wait time.Duration) idleReport {
	name, _, c, err := dialLine(addr, lineWait)
	if err != nil {
		return idleReport{Err: err.Error()}
	}
	defer c.Close()
	r := idleReport{First: name}
	time.Sleep(wait)
	// TCP's retransmissions back off (0.2 s, 0.4 s, ... doubling): a path
	// that was down for a few seconds (a daemon restarting under load)
	// answers a retransmission that comes seconds after it is back.
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte("again\n")); err != nil {
		r.Err = err.Error()
		return r
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.After, _, _ = strings.Cut(strings.TrimSpace(line), " ")
	return r
}

// helperUDP sends a datagram every interval from one socket for dur and
// prints "MS BACKEND PEER" for every answer as it arrives (MS since the
// start), then "sent N".
func helperUDP(addr string, dur, every time.Duration) error {
	c, err := net.Dial("udp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			_ = c.SetReadDeadline(start.Add(dur + time.Second))
			k, err := c.Read(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					return
				}
				continue // ICMP errors surface as read errors: keep going
			}
			name, peer, _ := strings.Cut(strings.TrimSpace(string(buf[:k])), " ")
			fmt.Printf("%d %s %s\n", time.Since(start).Milliseconds(), name, peer)
		}
	}()
	sent := 0
	for time.Since(start) < dur {
		_, _ = c.Write([]byte("ping"))
		sent++
		time.Sleep(every)
	}
	<-done
	fmt.Printf("sent %d\n", sent)
	return nil
}

// helperEcho echoes UDP datagrams on port whole, and accepts (and closes)
// TCP connections on it.
func helperEcho(port string) error {
	pc, err := net.ListenPacket("udp4", ":"+port)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", ":"+port)
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		c.Close()
	}
}

// udpEcho sends a size-byte datagram on c until the same bytes come back
// (5 tries, 2 s each).
func udpEcho(c net.Conn, size int) error {
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i*7 + i>>8)
	}
	buf := make([]byte, 65536)
	last := errors.New("no answer")
	for range 5 {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		switch {
		case err != nil:
			last = err
		case n != size || string(buf[:n]) != string(msg):
			last = fmt.Errorf("echo of %d bytes differs from the %d sent", n, size)
		default:
			return nil
		}
	}
	return last
}
