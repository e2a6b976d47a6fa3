package e2e

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// podman runs Podman with its own storage (vfs), run root and CNI
// configuration, on the CNI network backend with the vxmesh plugin.
type podman struct {
	t    *testing.T
	dir  string
	conf string // CONTAINERS_CONF
}

// newPodman prepares a private Podman: a containers.conf that selects the
// CNI backend with pluginDir and confDir, and an image "localhost/vxbb"
// imported from a root filesystem holding busybox-static. Containers run
// with runc (Debian's crun refuses hybrid cgroup hierarchies) and with
// explicit, low rlimits (Podman's defaults exceed what a sandboxed root
// may set). It skips (fails under VXMESH_E2E_REQUIRE=1) without podman,
// runc or busybox-static.
func newPodman(t *testing.T, pluginDir, confDir string) *podman {
	t.Helper()
	for _, need := range [][2]string{{"podman", "podman"}, {"runc", "runc"}, {"/bin/busybox", "busybox-static"}} {
		if _, err := exec.LookPath(need[0]); err != nil {
			msg := fmt.Sprintf("%s missing (apt-get install %s, or make deps)", need[0], need[1])
			if os.Getenv("VXMESH_E2E_REQUIRE") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	if f, err := elf.Open("/bin/busybox"); err != nil || f.Section(".interp") != nil {
		msg := "/bin/busybox is not a static binary (apt-get install busybox-static)"
		if os.Getenv("VXMESH_E2E_REQUIRE") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	} else {
		f.Close()
	}
	p := &podman{t: t, dir: t.TempDir()}
	p.conf = filepath.Join(p.dir, "containers.conf")
	conf := fmt.Sprintf("[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [%q]\nnetwork_config_dir = %q\n", pluginDir, confDir)
	if err := os.WriteFile(p.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(p.dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err == nil {
		err = os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), bb, 0o755)
	}
	for _, c := range []string{"sh", "ping", "sleep", "cat", "nslookup", "ip"} {
		if err == nil {
			err = os.Symlink("busybox", filepath.Join(rootfs, "bin", c))
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(p.dir, "rootfs.tar")
	if out, err := exec.Command("tar", "-C", rootfs, "-cf", tarball, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	p.must("import", tarball, "localhost/vxbb")
	if got := strings.TrimSpace(p.must("info", "--format", "{{.Host.NetworkBackend}}")); got != "cni" {
		t.Fatalf("podman network backend %q, want cni", got)
	}
	t.Cleanup(func() {
		// Removing the containers runs the plugin's DEL; vfs storage
		// leaves no mounts, so the directory goes with t.TempDir.
		p.run("rm", "--all", "--force", "--time", "0")
		p.run("system", "reset", "--force")
	})
	return p
}

func (p *podman) run(args ...string) (string, error) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := append([]string{"--root", filepath.Join(p.dir, "root"), "--runroot", filepath.Join(p.dir, "runroot"),
		"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none", "--runtime", "runc"}, args...)
	cmd := exec.CommandContext(ctx, "podman", full...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+p.conf, "GORACE=atexit_sleep_ms=0")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("podman %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out.String(), nil
}

func (p *podman) must(args ...string) string {
	p.t.Helper()
	out, err := p.run(args...)
	if err != nil {
		p.t.Fatal(err)
	}
	return out
}

// TestCNIPodman runs containers with `podman run --network` on a vxmesh
// network through vxmesh-cni (Podman's CNI backend): a fixed address
// (--ip) and an alias (--network-alias) reach the plugin, a second
// container pings the first by name and address, and `podman rm` detaches.
func TestCNIPodman(t *testing.T) {
	e := newEnv(t)
	pluginDir, _ := cniTools(t)
	confDir := t.TempDir()
	// Podman's CNI backend brings the loopback up itself; the standard
	// plugins stay out of the way.
	net := "pm-" + suite.prefix
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[{"type":"vxmesh-cni","network":"pmweb","socket":%q,"capabilities":{"ips":true,"aliases":true}}]}`, net, e.h.Socket)
	if err := os.WriteFile(filepath.Join(confDir, net+".conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	e.cli("network", "create", "pmweb", "--subnet", "10.94.0.0/24")
	p := newPodman(t, pluginDir, confDir)

	p.must("run", "-d", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--name", "pa", "--network", net, "--ip", "10.94.0.60", "--network-alias", "alpha", "localhost/vxbb", "sleep", "600")
	var ctrA string
	for _, c := range e.containers() {
		if strings.HasPrefix(c.Name, "cni-") {
			ctrA = c.Name
			if len(c.Endpoints) != 1 || c.Endpoints[0].IP != "10.94.0.60" || !slices.Contains(c.Endpoints[0].Aliases, "alpha") {
				t.Fatalf("podman container on vxmesh: %+v", c)
			}
		}
	}
	if ctrA == "" {
		t.Fatalf("no cni-* container in vxmesh ps after podman run: %+v", e.containers())
	}
	out := p.must("run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", net, "localhost/vxbb", "sh", "-c",
		"cat /etc/resolv.conf; ping -c1 -W2 10.94.0.60 && nslookup alpha 127.0.0.11")
	// Podman writes the result's nameserver into the container's
	// resolv.conf.
	if !strings.Contains(out, "nameserver 127.0.0.11") || !strings.Contains(out, "1 packets received") || !strings.Contains(out, "Address: 10.94.0.60") {
		t.Fatalf("podman run --network %s: ping/nslookup of pa:\n%s", net, out)
	}
	t.Logf("second container:\n%s", out)
	p.must("rm", "--force", "--time", "0", "pa")
	for _, c := range e.containers() {
		if strings.HasPrefix(c.Name, "cni-") {
			t.Fatalf("vxmesh still has %s after podman rm: %+v", c.Name, c)
		}
	}
}
