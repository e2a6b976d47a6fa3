package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// cli runs the CLI in-process and returns its exit status and streams.
func cli(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = runCLI(&cliEnv{stdout: &out, stderr: &errb}, args)
	return code, out.String(), errb.String()
}

// leafPaths lists every runnable command as its words ("network create").
func leafPaths(cmds []command, prefix []string) [][]string {
	var out [][]string
	for _, c := range cmds {
		p := append(append([]string{}, prefix...), c.name)
		if c.subs != nil {
			out = append(out, leafPaths(c.subs, p)...)
			continue
		}
		out = append(out, p)
	}
	return out
}

func TestHelpForEveryCommandOnStdout(t *testing.T) {
	for _, path := range leafPaths(commands(), nil) {
		var forms [][]string
		forms = append(forms, append([]string{"help"}, path...), append(append([]string{"help"}, path...), "--socket", "/s"),
			append([]string{"--socket", "/s", "help"}, path...))
		if path[0] != "help" {
			forms = append(forms, append(append([]string{}, path...), "-h"), append(append([]string{}, path...), "--help"))
		}
		for _, args := range forms {
			code, out, errs := cli(args...)
			if code != 0 || errs != "" {
				t.Errorf("vxmesh %s: exit %d, stderr %q; want 0 and nothing", strings.Join(args, " "), code, errs)
				continue
			}
			if !strings.Contains(out, "Usage: vxmesh "+strings.Join(path, " ")) {
				t.Errorf("vxmesh %s: no usage line in %q", strings.Join(args, " "), out)
			}
			ex := regexp.MustCompile(`Example:\n  (sudo )?vxmesh ` + regexp.QuoteMeta(path[0]) + `\b`)
			if !ex.MatchString(out) {
				t.Errorf("vxmesh %s: no example of the command in %q", strings.Join(args, " "), out)
			}
			if path[0] != "help" && path[0] != "version" && !strings.Contains(out, "--socket") {
				t.Errorf("vxmesh %s: flags not listed in %q", strings.Join(args, " "), out)
			}
		}
	}
}

func TestHelpForGroupsAndTopLevel(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}} {
		code, out, errs := cli(args...)
		if code != 0 || errs != "" || !strings.Contains(out, "Usage: vxmesh COMMAND") {
			t.Errorf("vxmesh %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, out, errs)
		}
		for _, c := range commands() {
			if !strings.Contains(out, "  "+c.name+" ") {
				t.Errorf("vxmesh %s: command %s not listed", strings.Join(args, " "), c.name)
			}
		}
	}
	for _, c := range commands() {
		if c.subs == nil {
			continue
		}
		for _, args := range [][]string{{c.name, "-h"}, {c.name, "--help"}, {"help", c.name}, {c.name, "help"}} {
			code, out, errs := cli(args...)
			if code != 0 || errs != "" || !strings.Contains(out, "Usage: vxmesh "+c.name+" SUBCOMMAND") {
				t.Errorf("vxmesh %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, out, errs)
			}
			for _, s := range c.subs {
				if !strings.Contains(out, "  "+s.name+" ") {
					t.Errorf("vxmesh %s: subcommand %s not listed", strings.Join(args, " "), s.name)
				}
			}
		}
	}
}

func TestUsageErrorsExit2OnOneLineWithFullCommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "vxmesh: want a command"},
		{[]string{"netwrok", "ls"}, `vxmesh: unknown command "netwrok": did you mean "network"?`},
		{[]string{"sats"}, `vxmesh: unknown command "sats": did you mean "stats"?`},
		{[]string{"xyzzy"}, `vxmesh: unknown command "xyzzy" (see vxmesh help)`},
		{[]string{"network", "lss"}, `vxmesh network: unknown subcommand "lss": did you mean "ls"?`},
		{[]string{"network", "inpsect", "web"}, `vxmesh network: unknown subcommand "inpsect": did you mean "inspect"?`},
		{[]string{"network"}, "vxmesh network: want a subcommand: create, ls, inspect, update, rm"},
		{[]string{"--socket", "/s", "node"}, "vxmesh node: want a subcommand: ls"},
		{[]string{"node", "--socket", "/s", "ls"}, `vxmesh node: want a subcommand (ls) before the flags, got "--socket"`},
		{[]string{"key", "rotat"}, `vxmesh key: unknown subcommand "rotat": did you mean "rotate"?`},
		{[]string{"network", "create", "a", "b"}, "vxmesh network create: want a network name, got 2 argument(s): a b (see vxmesh help network create)"},
		{[]string{"network", "create", "web", "--vni", "99999999"}, "vxmesh network create: network \"web\": --vni 99999999: out of range"},
		{[]string{"network", "ls", "--bogus"}, "vxmesh network ls: flag provided but not defined: -bogus"},
		{[]string{"network", "ls", "--format", "{{.Name"}, "vxmesh network ls: --format \"{{.Name\": want table, json or a Go template"},
		{[]string{"ps", "--format", "yaml"}, "vxmesh ps: --format \"yaml\": want table, json or a Go template"},
		{[]string{"ps", "extra"}, "vxmesh ps: want no arguments"},
		{[]string{"run", "--net", "container:c1", "--name", "side", "--", "true"}, "vxmesh run: --net container:c1 runs the command in that container, making no new one; --name, --rm,"},
		{[]string{"run", "--net", "container:c1", "--rm", "--", "true"}, "vxmesh run: --net container:c1 runs the command in that container, making no new one; --name, --rm,"},
		{[]string{"run", "--net", "container:c1", "--network", "web", "--", "true"}, "vxmesh run: --net container:c1 runs the command in that container, making no new one;"},
		{[]string{"exec"}, "vxmesh exec: want a container name, then the command"},
		{[]string{"rm"}, "vxmesh rm: want one or more container names"},
		{[]string{"stop"}, "vxmesh stop: want one or more container names"},
		{[]string{"start", "-t", "3", "c1"}, "vxmesh start: flag provided but not defined: -t"},
		{[]string{"restart", "-t", "-2", "c1"}, `vxmesh restart: invalid value "-2" for flag -t: want seconds, 0 or more`},
		{[]string{"run", "--rm", "--restart", "always", "--network", "web", "--name", "c1", "--", "true"}, "vxmesh run: --rm and --restart always: choose one"},
		{[]string{"run", "--restart", "sometimes", "--network", "web", "--name", "c1", "--", "true"}, `vxmesh run: --restart: restart policy "sometimes": want no, on-failure[:MAX], always or unless-stopped`},
		{[]string{"run", "--restart", "always:2", "--network", "web", "--name", "c1", "--", "true"}, `vxmesh run: --restart: restart policy "always:2": only on-failure takes a maximum retry count`},
		{[]string{"run", "--net", "container:c1", "--restart", "always", "--", "true"}, "vxmesh run: --net container:c1 runs the command in that container, making no new one; --name, --rm, --restart,"},
		{[]string{"key", "export"}, "vxmesh key export: want --wireshark"},
		{[]string{"daemon", "--data-port", "0"}, "vxmesh daemon: --data-port 0: out of range"},
		{[]string{"daemon", "--metrics-addr", "9100"}, `vxmesh daemon: --metrics-addr "9100": want HOST:PORT`},
		{[]string{"daemon", "--debug-addr", "6060"}, `vxmesh daemon: --debug-addr "6060": want HOST:PORT`},
		{[]string{"daemon", "--docker-host", "tcp://127.0.0.1:2375"}, `vxmesh daemon: --docker-host (or $DOCKER_HOST): docker host "tcp://127.0.0.1:2375": only unix:// sockets are supported, not tcp://`},
		{[]string{"help", "nope"}, `vxmesh help: unknown command "nope"`},
		{[]string{"help", "ps", "extra"}, `vxmesh help: unknown argument "extra" after "ps"`},
		{[]string{"version", "x"}, "vxmesh version: want no arguments"},
	} {
		code, out, errs := cli(tc.args...)
		if code != exitUsage || out != "" || !strings.HasPrefix(errs, tc.want) || strings.Count(errs, "\n") != 1 || !strings.HasSuffix(errs, "\n") {
			t.Errorf("vxmesh %s: exit %d, stdout %q, stderr %q; want exit 2 and one line starting %q", strings.Join(tc.args, " "), code, out, errs, tc.want)
		}
	}
}

func TestDaemonErrorsExit1WithFullCommand(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, args := range [][]string{{"network", "create", "web"}, {"key", "ls"}, {"node", "ls"}, {"ps"}, {"fdb", "web"}} {
		code, _, errs := cli(append(args, "--socket", sock)...)
		path := args
		if args[len(args)-1] == "web" {
			path = args[:len(args)-1]
		}
		want := "vxmesh " + strings.Join(path, " ") + ": cannot reach the vxmesh daemon at " + sock
		if code != exitFailure || !strings.HasPrefix(errs, want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("vxmesh %s: exit %d, stderr %q; want 1 and %q", strings.Join(args, " "), code, errs, want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		d    int
	}{
		{"", "", 0}, {"ps", "ps", 0}, {"", "abc", 3}, {"netwrok", "network", 1}, {"sats", "stats", 1},
		{"kitten", "sitting", 3}, {"inpsect", "inspect", 1}, {"rm", "run", 2},
	} {
		if got := editDistance(tc.a, tc.b); got != tc.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.d)
		}
		if got := editDistance(tc.b, tc.a); got != tc.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.b, tc.a, got, tc.d)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, errs := cli(args...)
		if code != 0 || errs != "" || !strings.HasPrefix(out, "vxmesh ") {
			t.Errorf("vxmesh %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, out, errs)
		}
	}
}

// fakeDaemon serves canned API answers on a unix socket, with nil slices
// (JSON null) where a daemon may send them, and returns the socket path.
func fakeDaemon(t *testing.T) string {
	t.Helper()
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ep1 := api.Endpoint{Name: "c1", Network: "web", IP: "10.0.1.2", MAC: "02:42:0a:00:01:02", IfName: "eth0", Node: "h1", State: "up"}
	ep2 := api.Endpoint{Name: "c2", Network: "web", IP: "10.0.1.3", MAC: "02:42:0a:00:01:03", IfName: "eth0", Node: "h1", State: "up", Aliases: []string{"db"}}
	three := 3
	answers := map[string]any{
		"/v1/networks": []api.Network{
			{Name: "web", ID: "0123456789abcdef0123", Subnet: "10.0.1.0/24", Gateway: "10.0.1.1", MTU: 1405, VNI: 4096, Created: created, Encrypted: true, Cipher: "aes128-gcm"},
			{Name: "db", ID: "fedcba9876543210fedc", Subnet: "10.0.2.0/24", Gateway: "10.0.2.1", MTU: 1450, VNI: 4097, Created: created},
		},
		"/v1/networks/web": api.Network{Name: "web", ID: "0123456789abcdef0123", Subnet: "10.0.1.0/24", Gateway: "10.0.1.1", MTU: 1405, VNI: 4096,
			Created: created, Encrypted: true, Cipher: "aes128-gcm", Endpoints: []api.Endpoint{ep1, ep2},
			Peers: []api.Peer{{VTEP: "192.0.2.2", Node: "h2", RxPackets: 5}},
			SAs:   []api.SA{{Node: "h2", VTEP: "192.0.2.2", Direction: "out", Key: 1, State: "primary", SPI: "0x1", Cipher: "aes128-gcm", Drops: map[string]uint64{"replay": 1}}}},
		"/v1/networks/web/fdb": []api.FDBEntry{{MAC: "02:42:0a:00:01:02", IP: "10.0.1.2", Port: "c1", Kind: "local"}, {MAC: "02:00:00:00:00:09", Port: "tunnel", Kind: "learned", VTEP: "192.0.2.2", AgeSeconds: 7}},
		"/v1/containers": []api.Container{
			{Name: "c1", Netns: "/run/netns/c1", Managed: true, PIDs: []int{42}, Endpoints: []api.Endpoint{ep1}, State: "up", Status: "running"},
			{Name: "c2", Netns: "/run/netns/c2", Managed: true, State: "up", Status: "exited 3", ExitStatus: &three},
		},
		"/v1/endpoints": []api.Endpoint{ep1, ep2},
		"/v1/nodes":     []api.Node{{Name: "h1", Addr: "192.0.2.1:7946", DataAddr: "192.0.2.1", State: "alive", Self: true}},
		"/v1/keys":      api.Keys{Version: 2, Primary: 1, Keys: []api.KeyInfo{{ID: 1, Created: created, State: "primary"}}, Rotator: "h1", RotationInterval: 3600},
		"/v1/stats": api.Stats{Node: "h1", Networks: []api.NetworkStats{{Network: "web", Ports: []api.PortStats{{Name: "c1", RxPackets: 1, Drops: map[string]uint64{"spoofed-src": 2}}}}},
			DNS: api.DNSStats{UpstreamLatency: api.LatencyStats{}}, OpenFDs: 37, FDLimit: 1000, Goroutines: 42,
			GossipDrops:  map[string]uint64{"entry-resent": 3},
			KernelTunnel: &api.KernelTunnelStats{Mode: "auto", Reason: `nftables chain "inet f fw" on the forward hook can filter forwarded packets`, TxSupers: 5, SuperFallbacks: 1, RxSupers: 4}, ESPHelperSealed: 11, ESPAESGCM: "vaes-avx512",
			Services:  []api.ServiceStats{{Service: "api", Network: "web", VIP: "10.0.1.200", NewConns: 9, Active: 2}},
			Conntrack: api.ConntrackStats{Max: 262144, Entries: 2},
			Egress:    api.EgressStats{NAT: &api.NATStats{Mode: "auto", Reason: `nftables chain "inet filter input" on the input hook can filter packets to this host`, Cut: 2, Ports: 1}}},
		"/v1/services": []api.Service{
			{Name: "api", ID: "00112233445566778899aabbccddeeff", EndpointMode: "vip", VIPs: []api.ServiceVIP{{Network: "web", VIP: "10.0.1.200"}},
				Scheduler: "rr", StopGracePeriod: "10s", DNSTTL: "10s", Created: created, CreatedBy: "h1",
				Published: []string{"published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve"}},
			{Name: "rr", ID: "ffeeddccbbaa99887766554433221100", EndpointMode: "dnsrr", VIPs: []api.ServiceVIP{{Network: "db"}},
				Scheduler: "rr", StopGracePeriod: "10s", DNSTTL: "10s", Created: created, CreatedBy: "h2", Published: []string{}},
		},
		"/v1/services/api": api.Service{Name: "api", ID: "00112233445566778899aabbccddeeff", EndpointMode: "vip",
			VIPs: []api.ServiceVIP{{Network: "web", VIP: "10.0.1.200"}}, Scheduler: "maglev", Ports: []string{"80/tcp"},
			StopGracePeriod: "10s", DNSTTL: "10s", Created: created, CreatedBy: "h1",
			Backends:  []api.ServiceBackend{{Node: "h1", Container: "c1", Network: "web", IP: "10.0.1.2", Weight: 1, State: "active", Health: "healthy", HealthReason: "http 200", HealthSince: time.Unix(1700000000, 0), ActiveConns: 2}},
			Stats:     []api.ServiceStats{{Service: "api", Network: "web", VIP: "10.0.1.200", NewConns: 9, Active: 2}},
			Published: []string{"published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve"},
			PublishState: []api.ServicePublishState{{Node: "h1", Published: "published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve", State: "up", Network: "web", Local: true, Total: 3},
				{Node: "h2", Published: "published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve", State: "down: host port 0.0.0.0:8080 is already in use", Network: "web"}}},
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, ok := answers[r.URL.Path]
		if !ok || r.Method != http.MethodGet {
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(api.Error{Error: "not found: " + r.URL.Path})
			return
		}
		json.NewEncoder(w).Encode(a)
	}))
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return sock
}

// stateCommands are the commands that print state, as table, JSON or
// template.
var stateCommands = [][]string{
	{"network", "ls"}, {"network", "inspect", "web"}, {"ps"}, {"endpoint", "ls"},
	{"node", "ls"}, {"fdb", "web"}, {"key", "ls"}, {"stats"},
	{"service", "ls"}, {"service", "inspect", "api"}, {"service", "ps", "api"},
}

func TestStatsShowsOpenFilesAgainstLimit(t *testing.T) {
	sock := fakeDaemon(t)
	code, out, errs := cli("stats", "--socket", sock)
	if code != 0 {
		t.Fatalf("vxmesh stats: exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "Open files: 37 of 1000 (3.7%)\n") {
		t.Fatalf("vxmesh stats does not show the open files against the limit:\n%s", out)
	}
	if !strings.Contains(out, "Goroutines: 42\n") {
		t.Fatalf("vxmesh stats does not show the daemon's goroutines:\n%s", out)
	}
	if !strings.Contains(out, "Gossip: entry-resent=3\n") {
		t.Fatalf("vxmesh stats does not show the gossip layer's resends and drops:\n%s", out)
	}
	if !strings.Contains(out, "Kernel tunnel segmentation (--kernel-tunnel=auto): off: nftables chain \"inet f fw\" on the forward hook can filter forwarded packets\n") {
		t.Fatalf("vxmesh stats does not show the kernel tunnel segmentation's state:\n%s", out)
	}
	if !strings.Contains(out, "Kernel tunnel segmentation: 5 super-packets sent, 1 refused (split here), 4 received whole\n") {
		t.Fatalf("vxmesh stats does not show the kernel tunnel segmentation counters:\n%s", out)
	}
	if !strings.Contains(out, "Published-port NAT (--mesh-nat=auto): steering off: nftables chain \"inet filter input\" on the input hook can filter packets to this host; 2 open connections cut by switching off\n") {
		t.Fatalf("vxmesh stats does not show the published-port NAT's steering state:\n%s", out)
	}
	if !strings.Contains(out, "ESP: AES-GCM by vaes-avx512; 11 datagrams sealed by helper goroutines\n") {
		t.Fatalf("vxmesh stats does not show the ESP datagrams sealed on helper goroutines:\n%s", out)
	}
}

func TestJSONOutputAlwaysHasItsArrays(t *testing.T) {
	sock := fakeDaemon(t)
	for _, args := range stateCommands {
		code, out, errs := cli(append(args, "--socket", sock, "--format", "json")...)
		if code != 0 {
			t.Fatalf("vxmesh %s: exit %d: %s", strings.Join(args, " "), code, errs)
		}
		if strings.Contains(out, "null") {
			t.Errorf("vxmesh %s --format json: null in %s", strings.Join(args, " "), out)
		}
	}
	for args, want := range map[string][]string{
		"network ls":          {`"vteps": []`, `"endpoints": []`, `"peers": []`, `"sas": []`, `"encrypted": false`},
		"network inspect web": {`"vteps": []`, `"aliases": []`},
		"ps":                  {`"pids": []`, `"endpoints": []`, `"status": "exited 3"`, `"exit_status": 3`},
		"endpoint ls":         {`"aliases": []`},
		"node ls":             {`"networks": []`},
		"key ls":              {`"nodes": []`},
		"stats":               {`"upstreams": []`, `"buckets": []`},
	} {
		_, out, _ := cli(append(strings.Fields(args), "--socket", sock, "--format", "json")...)
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("vxmesh %s --format json: no %s in %s", args, w, out)
			}
		}
	}
}

// jsonKeys collects every object key in a JSON document.
func jsonKeys(v any, keys map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			keys[k] = true
			jsonKeys(x, keys)
		}
	case []any:
		for _, x := range v {
			jsonKeys(x, keys)
		}
	}
}

func TestTableHeadingsAreJSONKeys(t *testing.T) {
	sock := fakeDaemon(t)
	heading := regexp.MustCompile(`^[A-Z]+( [A-Z]+)*(  +[A-Z]+( [A-Z]+)*)+ *$`)
	for _, args := range stateCommands {
		_, js, _ := cli(append(args, "--socket", sock, "--format", "json")...)
		var doc any
		if err := json.Unmarshal([]byte(js), &doc); err != nil {
			t.Fatalf("vxmesh %s --format json: %v", strings.Join(args, " "), err)
		}
		keys := map[string]bool{}
		jsonKeys(doc, keys)
		code, out, errs := cli(append(args, "--socket", sock)...)
		if code != 0 {
			t.Fatalf("vxmesh %s: exit %d: %s", strings.Join(args, " "), code, errs)
		}
		tables := 0
		for _, line := range strings.Split(out, "\n") {
			if !heading.MatchString(line) {
				continue
			}
			tables++
			for _, h := range regexp.MustCompile(`  +`).Split(strings.TrimSpace(line), -1) {
				if k := strings.ToLower(strings.ReplaceAll(h, " ", "_")); !keys[k] {
					have := make([]string, 0, len(keys))
					for k := range keys {
						have = append(have, k)
					}
					sort.Strings(have)
					t.Errorf("vxmesh %s: heading %q is no JSON key (%s); keys: %v", strings.Join(args, " "), h, k, have)
				}
			}
		}
		if tables == 0 && args[0] != "network" || args[0] == "network" && args[1] == "ls" && tables != 1 {
			t.Errorf("vxmesh %s: no table heading found in %q", strings.Join(args, " "), out)
		}
	}
}

func TestFormatTemplates(t *testing.T) {
	sock := fakeDaemon(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"network", "ls", "--format", "{{.Name}}"}, "web\ndb\n"},
		{[]string{"network", "ls", "--format", "{{.Name}} {{.Encrypted}} {{.Cipher}}"}, "web true aes128-gcm\ndb false \n"},
		{[]string{"ps", "--format", "{{.Name}}: {{.Status}}"}, "c1: running\nc2: exited 3\n"},
		{[]string{"ps", "--format", "{{json .PIDs}}"}, "[42]\n[]\n"},
		{[]string{"endpoint", "ls", "--format", `table {{.Name}}\t{{.IP}}`}, "NAME  IP\nc1    10.0.1.2\nc2    10.0.1.3\n"},
		{[]string{"node", "ls", "--format", `table {{.Name}}\t{{.DataAddr}}`}, "NAME  DATA ADDR\nh1    192.0.2.1\n"},
		{[]string{"endpoint", "ls", "--format", `{{.Name}}={{join .Aliases ","}}`}, "c1=\nc2=db\n"},
		{[]string{"network", "inspect", "web", "--format", "{{.Subnet}} {{len .Endpoints}} {{(index .SAs 0).Direction}}"}, "10.0.1.0/24 2 out\n"},
		{[]string{"stats", "--format", "{{.Node}} {{range .Networks}}{{.Network}}{{end}}"}, "h1 web\n"},
	} {
		code, out, errs := cli(append(tc.args, "--socket", sock)...)
		if code != 0 || out != tc.want {
			t.Errorf("vxmesh %s: exit %d, stdout %q, stderr %q; want %q", strings.Join(tc.args, " "), code, out, errs, tc.want)
		}
	}
	code, out, _ := cli("ps", "--socket", sock, "--format", "{{json .}}")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 {
		t.Fatalf("ps --format '{{json .}}': exit %d, %q", code, out)
	}
	var c api.Container
	if err := json.Unmarshal([]byte(lines[1]), &c); err != nil || c.Name != "c2" || c.Status != "exited 3" || !strings.Contains(lines[1], `"pids":[]`) {
		t.Errorf("ps --format '{{json .}}': line %q: %+v, %v", lines[1], c, err)
	}
	code, out, errs := cli("ps", "--socket", sock, "--format", "{{.Nope}}")
	if code != exitUsage || out != "" || !strings.HasPrefix(errs, "vxmesh ps: --format:") || !strings.Contains(errs, "Nope") || strings.Count(errs, "\n") != 1 {
		t.Errorf("ps --format '{{.Nope}}': exit %d, stdout %q, stderr %q; want a one-line usage error", code, out, errs)
	}
}

func TestVersionString(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"}, {Key: "vcs.modified", Value: "true"},
	}}
	for _, tc := range []struct {
		v    string
		info *debug.BuildInfo
		want string
	}{
		{"v1.2.3", info, "vxmesh v1.2.3 (revision 0123456789ab, modified) go1.26.8"},
		{"", info, "vxmesh devel (revision 0123456789ab, modified) go1.26.8"},
		{"", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.4.0"}}, "vxmesh v0.4.0 go1.26.8"},
		{"v1.2.3", nil, "vxmesh v1.2.3"},
	} {
		if got := versionString(tc.v, tc.info); got != tc.want {
			t.Errorf("versionString(%q) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

// TestRmTakesDockersForceFlag: rm -f and rm --force remove as rm does
// (rm always stops the processes, as docker rm -f) instead of a usage
// error for a Docker user's habit.
func TestRmTakesDockersForceFlag(t *testing.T) {
	var mu sync.Mutex
	var deleted []string
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		deleted = append(deleted, r.Method+" "+r.URL.Path)
		mu.Unlock()
	}))
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	for _, f := range []string{"-f", "--force"} {
		code, out, errs := cli("--socket", sock, "rm", f, "c1")
		if code != 0 || out != "c1\n" || errs != "" {
			t.Errorf("vxmesh rm %s c1: exit %d, stdout %q, stderr %q; want c1 removed", f, code, out, errs)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := "DELETE /v1/containers/c1,DELETE /v1/containers/c1"; strings.Join(deleted, ",") != want {
		t.Errorf("requests %q, want %q", deleted, want)
	}
}

// TestRmGoesOnPastAFailure: rm, network rm and service rm of several
// names remove every name they can, as docker rm does: an unknown name
// first does not leave the others in place. The failures are reported on
// one line and the exit status is 1.
func TestRmGoesOnPastAFailure(t *testing.T) {
	for _, tc := range []struct {
		cmd  []string
		path string
		kind string
	}{
		{[]string{"rm"}, "/v1/containers/", "container"},
		{[]string{"network", "rm"}, "/v1/networks/", "network"},
		{[]string{"service", "rm"}, "/v1/services/", "service"},
	} {
		var mu sync.Mutex
		var deleted []string
		sock := filepath.Join(t.TempDir(), "api.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			name, ok := strings.CutPrefix(r.URL.Path, tc.path)
			if r.Method != http.MethodDelete || !ok || strings.HasPrefix(name, "nope") {
				w.WriteHeader(http.StatusNotFound)
				json.NewEncoder(w).Encode(api.Error{Error: tc.kind + ` "` + name + `": not found`})
				return
			}
			mu.Lock()
			deleted = append(deleted, name)
			mu.Unlock()
		}))
		srv.Listener = l
		srv.Start()
		args := append(append([]string{"--socket", sock}, tc.cmd...), "nope1", "a", "nope2", "b")
		code, out, errs := cli(args...)
		srv.Close()
		want := "vxmesh " + strings.Join(tc.cmd, " ") + ": " + tc.kind + ` "nope1": not found; ` + tc.kind + ` "nope2": not found` + "\n"
		if code != exitFailure || out != "a\nb\n" || errs != want || strings.Join(deleted, ",") != "a,b" {
			t.Errorf("vxmesh %s: exit %d, stdout %q, stderr %q, deleted %q; want exit 1, a and b removed and printed, stderr %q",
				strings.Join(args, " "), code, out, errs, deleted, want)
		}
	}
	// A daemon that does not answer is reported once, not once per name.
	gone := filepath.Join(t.TempDir(), "none.sock")
	code, out, errs := cli("--socket", gone, "rm", "a", "b", "c")
	if code != exitFailure || out != "" || strings.Count(errs, gone) != 1 || strings.Count(errs, "\n") != 1 {
		t.Errorf("rm a b c without a daemon: exit %d, stdout %q, stderr %q; want exit 1 and the unreachable daemon named once", code, out, errs)
	}
}

// A command that cannot start fails before anything is made or asked of
// the daemon, and exits as a shell and docker run/exec do: 127 when it is
// not found, 126 when it is not executable.
func TestCommandThatCannotStartExits127Or126(t *testing.T) {
	notExec := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "--network", "web", "--name", "x", "--socket", "/nonexistent.sock", "--", "no-such-command-xyz"}, 127, `vxmesh run: command "no-such-command-xyz": executable file not found in $PATH`},
		{[]string{"exec", "--socket", "/nonexistent.sock", "c1", "--", "no-such-command-xyz"}, 127, `vxmesh exec: command "no-such-command-xyz": executable file not found in $PATH`},
		{[]string{"exec", "--socket", "/nonexistent.sock", "c1", "--", notExec}, 126, `vxmesh exec: command "` + notExec + `": permission denied`},
		{[]string{"exec", "--socket", "/nonexistent.sock", "c1", "--", filepath.Dir(notExec)}, 126, `vxmesh exec: command "` + filepath.Dir(notExec) + `": is a directory`},
	} {
		code, out, errs := cli(tc.args...)
		if code != tc.code || out != "" || errs != tc.want+"\n" {
			t.Errorf("vxmesh %s: exit %d, stdout %q, stderr %q; want exit %d and %q", strings.Join(tc.args, " "), code, out, errs, tc.code, tc.want)
		}
	}
}

// TestEnterableRefusesGoneAndStopped: exec and --net container: enter a
// container that is up or running, and refuse one whose namespace is gone
// or that is stopped (as the namespace look-up shows it), saying why.
func TestEnterableRefusesGoneAndStopped(t *testing.T) {
	for _, tc := range []struct {
		ctr  api.Container
		want string
	}{
		{api.Container{Name: "c", State: api.ContainerUp}, ""},
		{api.Container{Name: "c", State: api.ContainerGone, Netns: "/run/netns/c"}, `container "c": its network namespace /run/netns/c is gone`},
		{api.Container{Name: "c", State: api.ContainerUp, Status: "exited 137"}, `container "c" is not running (exited 137; start it with vxmesh start, or remove it with vxmesh rm)`},
		{api.Container{Name: "c", State: api.ContainerUp, Status: api.StatusRestarting}, `container "c" is not running (restarting;`},
		{api.Container{Name: "c", State: api.ContainerUp, Status: api.StatusStopped}, `container "c" is not running (stopped;`},
	} {
		err := enterable(tc.ctr)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("enterable(%+v) = %v, want %q", tc.ctr, err, tc.want)
		}
	}
}
