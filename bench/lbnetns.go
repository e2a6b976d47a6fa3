package main

// Servers and probes that the load-balancer benchmark runs inside network
// namespaces from its own process.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// inNetns runs f on an OS thread moved into the network namespace at path.
// Sockets f opens belong to that namespace for their whole life, whichever
// goroutine uses them later. The thread goes back to its own namespace
// afterwards; if it cannot, it stays locked, so the Go runtime discards it
// and no other goroutine ever runs in the namespace. (Letting every such
// thread die is no option: a child started with Pdeathsig from a thread
// gets the signal when that thread exits.)
func inNetns(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(self)
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		err = f()
		if unix.Setns(self, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// httpBody is what every backend's HTTP server answers: a small file.
var httpBody = []byte(strings.Repeat("vxmesh lb bench\n", 4))

// startHTTP serves httpBody on TCP port port in the namespace at netns
// (keep-alive, or one request per connection when the client asks for
// Connection: close) until the returned server is closed.
func startHTTP(netns string, port int) (*http.Server, error) {
	var ln net.Listener
	err := inNetns(netns, func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("http server in %s: %w", netns, err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write(httpBody)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

// httpGet sends one GET / to addr (host:port) from the namespace at netns
// and returns the response's status line.
func httpGet(netns, addr string) (string, error) {
	var status string
	err := inNetns(netns, func() error {
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: bench\r\n\r\n"); err != nil {
			return err
		}
		status, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSpace(status), err
}

// waitHTTP polls addr from netns until it answers 200, for up to timeout.
func waitHTTP(ctx context.Context, netns, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := httpGet(netns, addr)
		if err == nil && strings.Contains(st, " 200 ") {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("status %q", st)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("http://%s/ from %s: %w", addr, netns, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// procs are background commands (servers) started in namespaces.
type procs struct {
	cmds []*exec.Cmd
	done []chan struct{}
}

// start runs argv in the namespace at netns, output to logPath, until
// stop (or the bench's death: Pdeathsig).
func (p *procs) start(netns, logPath string, argv ...string) (chan struct{}, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=" + netns, "--"}, argv...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", argv[0], err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmds = append(p.cmds, cmd)
	p.done = append(p.done, done)
	return done, nil
}

// stop kills every command and waits for it.
func (p *procs) stop() {
	for i, c := range p.cmds {
		_ = c.Process.Kill()
		<-p.done[i]
	}
	p.cmds, p.done = nil, nil
}

// logTail returns the end of a server's log file.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	return tail(strings.TrimSpace(string(b)), 500)
}
