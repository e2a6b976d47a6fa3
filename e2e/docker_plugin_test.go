package e2e

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
	"github.com/vxmesh/vxmesh/sandbox"
)

// dockerEngine is a private Docker Engine in a testbed host's namespace,
// with its own data root, exec root and API socket.
type dockerEngine struct {
	t    *testing.T
	dir  string // short: dockerd's exec root and its sockets live there
	sock string
	conf string // DOCKER_CONFIG of the client
	cmd  *exec.Cmd
	done chan struct{}
}

// needDocker makes sure dockerd, the docker client and a static busybox
// are there, installing the test profile's packages (.ci/deps test, which
// has docker.io and busybox-static) as root when one is missing; without
// them the test skips, or fails when e2e is required.
func needDocker(t *testing.T) {
	t.Helper()
	missing := func() string {
		for _, c := range []string{"dockerd", "docker", "/bin/busybox"} {
			if _, err := exec.LookPath(c); err != nil {
				return c
			}
		}
		f, err := elf.Open("/bin/busybox")
		if err != nil {
			return "/bin/busybox"
		}
		defer f.Close()
		if f.Section(".interp") != nil {
			return "a static /bin/busybox"
		}
		return ""
	}
	if missing() != "" && os.Geteuid() == 0 {
		if out, err := exec.Command("../.ci/deps", "test").CombinedOutput(); err != nil {
			t.Logf(".ci/deps test: %v: %s", err, out)
		}
	}
	if m := missing(); m != "" {
		msg := m + " missing (apt-get install docker.io busybox-static, or make deps)"
		if testenv.Required() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// startDockerd starts dockerd in h's namespace (so that it sees the TAP
// devices h's vxmesh daemon makes) and waits until it answers. The
// cleanup removes every container and network it has, stops it and
// removes its directories.
func startDockerd(t *testing.T, h *testbed.Host) *dockerEngine {
	t.Helper()
	// The exec root holds unix sockets: keep its path short.
	dir, err := os.MkdirTemp("/tmp", "vxd")
	if err != nil {
		t.Fatal(err)
	}
	d := &dockerEngine{t: t, dir: dir, sock: filepath.Join(dir, "d.sock"), conf: filepath.Join(dir, "cfg"), done: make(chan struct{})}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command("nsenter", "--net="+h.NetnsPath, "--", "dockerd",
		"--storage-driver=vfs", "--iptables=false", "--ip-forward=false", "--bridge=none",
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "x"),
		"-H", "unix://"+d.sock, "--pidfile", filepath.Join(dir, "d.pid"))
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("dockerd: %v", err)
	}
	go func() {
		d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(d.stop)
	eventually(t, 60*time.Second, func() error {
		select {
		case <-d.done:
			t.Fatalf("dockerd exited:\n%s", d.log())
		default:
		}
		_, err := d.run("version")
		return err
	}, "dockerd at %s", d.sock)
	return d
}

func (d *dockerEngine) log() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// run runs the docker client against the engine.
func (d *dockerEngine) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", append([]string{"-H", "unix://" + d.sock}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+d.conf)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

func (d *dockerEngine) must(args ...string) string {
	d.t.Helper()
	out, err := d.run(args...)
	if err != nil {
		d.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// stop removes the engine's containers and networks (their endpoints
// leave vxmesh through the plugin), stops dockerd and removes its
// directories, unmounting what it left mounted there.
func (d *dockerEngine) stop() {
	if ids, err := d.run("ps", "-aq"); err == nil && strings.TrimSpace(ids) != "" {
		d.run(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
	}
	d.run("network", "prune", "-f")
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		d.t.Errorf("dockerd did not stop in 20 s; killed")
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
	for _, m := range mountsUnder(d.dir) {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
	if err := os.RemoveAll(d.dir); err != nil {
		d.t.Errorf("removing dockerd's directory: %v", err)
	}
}

// mountsUnder lists the mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 4 && strings.HasPrefix(fs[4], dir+"/") {
			out = append(out, fs[4])
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// importBusybox imports an image "vxbb" of a root filesystem holding
// /bin/busybox and its applets' links.
func (d *dockerEngine) importBusybox() {
	d.t.Helper()
	rootfs := filepath.Join(d.t.TempDir(), "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		d.t.Fatal(err)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err == nil {
		err = os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), bb, 0o755)
	}
	for _, c := range []string{"sh", "ping", "sleep", "cat", "nslookup", "ip", "httpd"} {
		if err == nil {
			err = os.Symlink("busybox", filepath.Join(rootfs, "bin", c))
		}
	}
	if err != nil {
		d.t.Fatal(err)
	}
	tarball := filepath.Join(filepath.Dir(rootfs), "rootfs.tar")
	if out, err := exec.Command("tar", "-C", rootfs, "-cf", tarball, ".").CombinedOutput(); err != nil {
		d.t.Fatalf("tar: %v: %s", err, out)
	}
	d.must("import", tarball, "vxbb")
}

// dockerEndpoints are h's vxmesh endpoints of Docker containers.
func dockerEndpoints(e *env) map[string]string {
	out := map[string]string{}
	for _, ep := range e.endpoints() {
		if strings.HasPrefix(ep.Name, "docker-") {
			out[ep.Name] = ep.Network + " " + addrOnly(ep.IP) + " " + ep.State
		}
	}
	return out
}

// dockerHosts is two testbed hosts, each with a dockerd and a vxmesh
// daemon serving the plugin, and the `vxmesh run` container c2 on h2.
type dockerHosts struct {
	t           *testing.T
	h1, h2      *env
	eng, eng2   *dockerEngine
	driver      string // h1's plugin (h2's is driver2)
	driver2     string
	pluginSock  string
	pluginFlags []string // h1's daemon's
	gw, c2, d1  string   // web's gateway, c2's and d1's addresses
}

// startDockerHosts starts the engines and the daemons; every engine sees
// every socket in /run/docker/plugins, so each host's plugin has its own
// name.
func startDockerHosts(t *testing.T) *dockerHosts {
	needDocker(t)
	es := newTestbed(t, 2)
	s := &dockerHosts{t: t, h1: es[0], h2: es[1], driver: "vx" + testbed.RandomID(6), driver2: "vx" + testbed.RandomID(6)}
	s.pluginSock = "/run/docker/plugins/" + s.driver + ".sock"
	pluginSock2 := "/run/docker/plugins/" + s.driver2 + ".sock"
	// After the engines' cleanups (cleanups run last first), which need
	// the plugins.
	t.Cleanup(func() {
		for _, p := range []string{s.pluginSock, pluginSock2} {
			if _, err := os.Stat(p); err == nil {
				os.Remove(p)
			}
		}
	})
	// The daemon asks the engine for names (--docker-host): the engine
	// first.
	s.eng, s.eng2 = startDockerd(t, s.h1.h), startDockerd(t, s.h2.h)
	s.pluginFlags = []string{"--docker-plugin", "--docker-plugin-socket", s.pluginSock, "--docker-host", "unix://" + s.eng.sock}
	if err := s.h1.h.StartDaemon(s.pluginFlags...); err != nil {
		t.Fatal(err)
	}
	if err := s.h2.h.StartDaemon("--docker-plugin", "--docker-plugin-socket", pluginSock2, "--docker-host", "unix://"+s.eng2.sock); err != nil {
		t.Fatal(err)
	}
	s.eng.importBusybox()
	s.eng2.importBusybox()
	return s
}

// TestDockerNetworkPlugin drives vxmesh from Docker: `docker network
// create -d vxmesh --ipam-driver vxmesh` makes the cluster network, a
// Docker container on it reaches a `vxmesh run` container on another host
// by address and (with --dns at the gateway) by name and is reached back
// by address and by its Docker name, and a Docker container on the other
// host (whose Docker adopts the network) by name, an existing cluster
// network is adopted and a mismatch refused, `docker network connect
// --ip/disconnect`, `docker restart` and `docker rm -f` rewire and clean
// up its endpoints, a daemon restart (SIGTERM, kill -9) leaves Docker's
// containers wired, `docker run -p` publishes a port on the host, and the
// plugin's socket goes with the daemon.
func TestDockerNetworkPlugin(t *testing.T) {
	s := startDockerHosts(t)
	s.dockerReachesVxmesh()
	s.dockerReachesDocker()
	s.adoptAndRefuse()
	s.connectDisconnect()
	s.restarts()
	s.publish()
	s.stoppedWhileDown()
	s.removeAndStop()
}

// pingFrom waits until Docker container ctr of eng reaches to.
func (s *dockerHosts) pingFrom(eng *dockerEngine, ctr, to string) {
	s.t.Helper()
	eventually(s.t, 15*time.Second, func() error {
		_, err := eng.run("exec", ctr, "ping", "-c1", "-W1", to)
		return err
	}, "%s cannot ping %s", ctr, to)
}

// dockerReachesVxmesh: the Docker network makes the cluster network; d1
// on h1 and c2 (vxmesh run) on h2 reach each other by address and name.
func (s *dockerHosts) dockerReachesVxmesh() {
	t, eng := s.t, s.eng
	eng.must("network", "create", "-d", s.driver, "--ipam-driver", s.driver, "--subnet", "10.93.0.0/24", "web")
	n := s.h2.waitNetwork("web")
	if n.Subnet != "10.93.0.0/24" || n.Gateway != "10.93.0.1" {
		t.Fatalf("cluster network made by docker network create: %+v", n)
	}
	s.gw = n.Gateway
	s.h2.run("c2", "web")
	s.c2 = s.h2.ip("c2")

	eng.must("run", "-d", "--network", "web", "--dns", s.gw, "--name", "d1", "vxbb", "sleep", "1000")
	s.d1 = eng.must("inspect", "-f", "{{.NetworkSettings.Networks.web.IPAddress}}", "d1")
	eps := dockerEndpoints(s.h1)
	if len(eps) != 1 || !slices.Contains(mapValues(eps), "web "+s.d1+" up") {
		t.Fatalf("vxmesh endpoints of d1 (Docker says %s): %v", s.d1, eps)
	}
	s.pingFrom(eng, "d1", s.c2)
	out := eng.must("exec", "d1", "nslookup", "c2")
	if !strings.Contains(out, "Address: "+s.c2) {
		t.Fatalf("d1: nslookup c2 (--dns %s):\n%s", s.gw, out)
	}
	eng.must("exec", "d1", "ping", "-c1", "-W2", "c2")
	s.h2.mustPing("c2", s.d1)
	// The Docker container's name is its endpoint's alias, on every host.
	s.h2.mustPing("c2", "d1")
}

// dockerReachesDocker: h2's Docker adopts the network; its container and
// d1 reach each other by name.
func (s *dockerHosts) dockerReachesDocker() {
	eng2 := s.eng2
	eng2.must("network", "create", "-d", s.driver2, "--ipam-driver", s.driver2, "--subnet", "10.93.0.0/24", "web")
	eng2.must("run", "-d", "--network", "web", "--dns", s.gw, "--name", "d2", "vxbb", "sleep", "1000")
	if d2 := eng2.must("inspect", "-f", "{{.NetworkSettings.Networks.web.IPAddress}}", "d2"); d2 == s.d1 || d2 == s.c2 {
		s.t.Fatalf("d2 got %s, an address in use (d1 %s, c2 %s)", d2, s.d1, s.c2)
	}
	s.pingFrom(eng2, "d2", "d1")
	s.pingFrom(s.eng, "d1", "d2")
	eng2.must("rm", "-f", "d2")
	eng2.must("network", "rm", "web")
}

// adoptAndRefuse: an existing cluster network of the same name and subnet
// is adopted; -o vxmesh.network naming one whose subnet differs is
// refused.
func (s *dockerHosts) adoptAndRefuse() {
	t, eng := s.t, s.eng
	s.h2.network("db", "10.92.0.0/24")
	s.h1.waitNetwork("db")
	eng.must("network", "create", "-d", s.driver, "--ipam-driver", s.driver, "--subnet", "10.92.0.0/24", "db")
	_, err := eng.run("network", "create", "-d", s.driver, "--ipam-driver", s.driver, "--subnet", "10.91.0.0/24", "-o", "vxmesh.network=db", "db2")
	if err == nil || !strings.Contains(err.Error(), `the cluster network of that name has subnet 10.92.0.0/24, not 10.91.0.0/24`) {
		t.Fatalf("docker network create with a mismatched subnet: %v", err)
	}
	if names := s.h1.networkNames(); !slices.Equal(names, []string{"db", "web"}) {
		t.Fatalf("cluster networks: %v", names)
	}
}

// connectDisconnect: docker network connect --ip adds an endpoint with
// that address, disconnect removes it.
func (s *dockerHosts) connectDisconnect() {
	t, eng := s.t, s.eng
	d1db := "10.92.0.50"
	eng.must("network", "connect", "--ip", d1db, "db", "d1")
	if !slices.Contains(mapValues(dockerEndpoints(s.h1)), "db "+d1db+" up") {
		t.Fatalf("after docker network connect db d1 (%s): %v", d1db, dockerEndpoints(s.h1))
	}
	if out := eng.must("exec", "d1", "ip", "-o", "addr"); !strings.Contains(out, d1db+"/24") {
		t.Fatalf("d1 has no db address after connect:\n%s", out)
	}
	eng.must("network", "disconnect", "db", "d1")
	if eps := dockerEndpoints(s.h1); len(eps) != 1 {
		t.Fatalf("after docker network disconnect db d1: %v", eps)
	}
}

// restarts: docker restart (a new namespace) is rewired through the
// plugin. A vxmesh daemon restart, clean (SIGTERM) or not (kill -9),
// leaves d1 alone: its interfaces (on web and db) keep their names,
// addresses, MAC and routes, and once the daemon is back d1 and c2 reach
// each other by name again without any docker command; an interface that
// went while the daemon was down is made again as it was; afterwards
// docker network disconnect (an endpoint of before the restarts) removes
// its endpoint and device.
func (s *dockerHosts) restarts() {
	t, eng := s.t, s.eng
	before := dockerEndpoints(s.h1)
	eng.must("restart", "-t", "1", "d1")
	after := dockerEndpoints(s.h1)
	if len(after) != 1 || mapsEqual(before, after) {
		t.Fatalf("endpoints before restart %v, after %v: want one new one", before, after)
	}
	s.d1 = eng.must("inspect", "-f", "{{.NetworkSettings.Networks.web.IPAddress}}", "d1")
	s.pingFrom(eng, "d1", s.c2)
	s.h2.mustPing("c2", s.d1)
	s.h2.mustPing("c2", "d1")

	eng.must("network", "connect", "db", "d1")
	// What d1 sees of its network: interfaces (name, MAC), addresses,
	// routes.
	netView := func() string {
		links := eng.must("exec", "d1", "ip", "-o", "link")
		addrs := eng.must("exec", "d1", "ip", "-o", "-4", "addr")
		routes := eng.must("exec", "d1", "ip", "route")
		var keep []string
		for _, l := range strings.Split(links, "\n") {
			if f := strings.Fields(l); len(f) > 1 {
				mac := ""
				if i := slices.Index(f, "link/ether"); i >= 0 && i+1 < len(f) {
					mac = f[i+1]
				}
				keep = append(keep, strings.TrimSuffix(f[1], ":")+" "+mac)
			}
		}
		for _, l := range strings.Split(addrs, "\n") {
			// Without the interface index (a device made again has another).
			_, a, _ := strings.Cut(l, ": ")
			keep = append(keep, a)
		}
		return strings.Join(keep, "\n") + "\n" + routes
	}
	view := netView()
	eps := dockerEndpoints(s.h1)
	if len(eps) != 2 {
		t.Fatalf("Docker endpoints with d1 on web and db: %v", eps)
	}
	sandboxKey := eng.must("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", "d1")
	for _, how := range []string{"SIGTERM", "kill -9", "device gone"} {
		stop := s.h1.h.StopDaemon
		if how == "kill -9" {
			stop = s.h1.h.KillDaemon
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if how == "device gone" {
			// As after an upgrade from a daemon that did not keep the
			// devices: web's interface (eth0, with the default route)
			// is gone while the container runs.
			if out, err := exec.Command("nsenter", "--net="+sandboxKey, "ip", "link", "del", "eth0").CombinedOutput(); err != nil {
				t.Fatalf("deleting d1's eth0: %v: %s", err, out)
			}
		}
		started := time.Now()
		if err := s.h1.h.StartDaemon(s.pluginFlags...); err != nil {
			t.Fatal(err)
		}
		ready := time.Now()
		eventually(t, 10*time.Second, func() error {
			if got := dockerEndpoints(s.h1); !mapsEqual(got, eps) {
				return fmt.Errorf("%v, before %v", got, eps)
			}
			return nil
		}, "Docker endpoints after a daemon restart (%s)", how)
		if got := netView(); got != view {
			t.Fatalf("d1's interfaces and routes after a daemon restart (%s):\n%s\nbefore:\n%s", how, got, view)
		}
		s.pingFrom(eng, "d1", "c2")
		t.Logf("daemon restart (%s): start took %v, d1 pinged c2 by name %v after it", how, ready.Sub(started).Round(time.Millisecond), time.Since(ready).Round(time.Millisecond))
		s.h2.mustPing("c2", "d1")
	}
	eng.must("network", "disconnect", "db", "d1")
	if eps := dockerEndpoints(s.h1); len(eps) != 1 || !slices.Contains(mapValues(eps), "web "+s.d1+" up") {
		t.Fatalf("after docker network disconnect db d1 (after the restarts): %v", eps)
	}
	s.noHostTAPs("docker network disconnect")
}

// noHostTAPs fails if a Docker endpoint's TAP device is left in h1's
// namespace (Docker moves it back there before Leave).
func (s *dockerHosts) noHostTAPs(after string) {
	s.t.Helper()
	links, err := s.h1.h.Links()
	if err != nil {
		s.t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l, "vxd") {
			s.t.Fatalf("TAP %s left in h1's namespace after %s: %v", l, after, links)
		}
	}
}

// publish: docker run -p publishes the container's port on its host like
// vxmesh run -p: a client on the underlay (h2's namespace) reaches a
// busybox httpd in it at h1's address, and the server sees the client's
// own address, also after a daemon restart; a second container asking
// for the same host port is refused at docker run, naming it; docker rm
// -f frees the port.
func (s *dockerHosts) publish() {
	t, eng := s.t, s.eng
	// A CGI answering the client's address as the server sees it.
	script := `busybox mkdir -p /www/cgi-bin && printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "peer=$REMOTE_ADDR"\n' >/www/cgi-bin/peer && busybox chmod +x /www/cgi-bin/peer && exec busybox httpd -f -p 80 -h /www`
	eng.must("run", "-d", "--network", "web", "-p", "18080:80", "--name", "web1", "vxbb", "sh", "-c", script)
	addr := s.h1.h.Addr + ":18080"
	peer := func() string {
		var body string
		eventually(t, 15*time.Second, func() error {
			var err error
			body, err = httpGetFrom(s.h2.h.NetnsPath, addr, "/cgi-bin/peer")
			return err
		}, "GET http://%s/cgi-bin/peer from h2's namespace", addr)
		return body
	}
	// httpd listens on an IPv6 socket: IPv4 peers are mapped.
	want := "peer=[::ffff:" + s.h2.h.Addr + "]\n"
	if got := peer(); !strings.Contains(got, want) {
		t.Fatalf("web1 (docker run -p 18080:80) answered %q, want h2's address (%s)", got, want)
	}
	if err := s.h1.h.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := s.h1.h.StartDaemon(s.pluginFlags...); err != nil {
		t.Fatal(err)
	}
	if got := peer(); !strings.Contains(got, want) {
		t.Fatalf("after a daemon restart web1 answered %q, want %s", got, want)
	}
	_, err := eng.run("run", "-d", "--network", "web", "-p", "18080:80", "--name", "web2", "vxbb", "sleep", "1000")
	if err == nil || !strings.Contains(err.Error(), "host port 0.0.0.0:18080 is already in use") {
		t.Fatalf("docker run -p 18080:80 with the port taken: %v", err)
	}
	t.Logf("busy port: %v", err)
	_, err = eng.run("run", "-d", "--network", "web", "-p", "80", "--name", "web3", "vxbb", "sleep", "1000")
	if err == nil || !strings.Contains(err.Error(), "no host port") {
		t.Fatalf("docker run -p 80: %v", err)
	}
	t.Logf("no host port: %v", err)
	eng.must("rm", "-f", "web1", "web2", "web3")
	err = sandbox.RunInNetns(s.h1.h.NetnsPath, func() error {
		ln, err := net.Listen("tcp4", addr)
		if err == nil {
			ln.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("port 18080 after docker rm -f web1: %v", err)
	}
	if eps := dockerEndpoints(s.h1); len(eps) != 1 {
		t.Fatalf("Docker endpoints after docker rm -f web1 web2 web3: %v", eps)
	}
}

// stoppedWhileDown: a Docker container removed while the daemon is down
// waits in Docker for the plugin (Docker 20.10 retries Leave until it
// answers); once the daemon is back the removal completes, the endpoint
// goes, and no device is left in h1's namespace.
func (s *dockerHosts) stoppedWhileDown() {
	t, eng := s.t, s.eng
	eng.must("run", "-d", "--network", "web", "--name", "d5", "vxbb", "sleep", "1000")
	before := len(dockerEndpoints(s.h1))
	pid := eng.must("inspect", "-f", "{{.State.Pid}}", "d5")
	if err := s.h1.h.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	rm := make(chan error, 1)
	go func() {
		_, err := eng.run("rm", "-f", "d5")
		rm <- err
	}()
	// Docker has killed the container and now waits for the plugin
	// (the container's record is locked meanwhile: inspect would wait).
	eventually(t, 15*time.Second, func() error {
		if _, err := os.Stat("/proc/" + pid); err == nil {
			return errors.New("still running")
		}
		return nil
	}, "d5 (pid %s) killed", pid)
	if err := s.h1.h.StartDaemon(s.pluginFlags...); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case err := <-rm:
		if err != nil {
			t.Fatalf("docker rm -f d5 across the daemon's restart: %v", err)
		}
	case <-time.After(50 * time.Second):
		t.Fatal("docker rm -f d5 did not complete within 50 s of the daemon's start")
	}
	t.Logf("docker rm -f d5 completed %v after the daemon was back", time.Since(start).Round(time.Millisecond))
	eventually(t, 15*time.Second, func() error {
		if eps := dockerEndpoints(s.h1); len(eps) != before-1 {
			return fmt.Errorf("%v", eps)
		}
		return nil
	}, "Docker endpoints after d5 was removed across a daemon restart")
	s.noHostTAPs("docker rm -f across a daemon restart")
}

// httpGetFrom sends GET path to addr from the namespace at nsPath and
// returns the answer, if its status is 200.
func httpGetFrom(nsPath, addr, path string) (string, error) {
	var c net.Conn
	err := sandbox.RunInNetns(nsPath, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, 3*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	// busybox httpd passes a CGI's header lines as they are (\n).
	status, _, _ := strings.Cut(string(b), "\n")
	if !strings.Contains(status, " 200 ") {
		return "", fmt.Errorf("answer %q", b)
	}
	return string(b), nil
}

// removeAndStop: docker rm -f takes the endpoint and its device; the
// plugin's socket goes with the daemon.
func (s *dockerHosts) removeAndStop() {
	t, eng := s.t, s.eng
	eng.must("rm", "-f", "d1")
	if eps := dockerEndpoints(s.h1); len(eps) != 0 {
		t.Fatalf("after docker rm -f d1: %v", eps)
	}
	s.noHostTAPs("docker rm")
	eng.must("network", "rm", "web", "db")
	if err := s.h1.h.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.pluginSock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("plugin socket %s after the daemon stopped: %v", s.pluginSock, err)
	}
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
