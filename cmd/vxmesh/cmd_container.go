package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/gateway"
)

func cmdRun(env *cliEnv, args []string) error {
	fs := newFlags(env, "run", false)
	var f runFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, s := range f.publish {
		if _, err := gateway.ParsePublish(s); err != nil {
			return usagef("-p: %s", err)
		}
	}
	members, err := parseServiceFlags(f.services)
	if err != nil {
		return err
	}
	argv := fs.Args()
	if len(argv) == 0 {
		return usagef("want a command after --")
	}
	if f.detach && f.remove {
		return usagef("-d and --rm: choose one")
	}
	policy, err := api.ParseRestartPolicy(f.restart)
	if err != nil {
		return usagef("--restart: %v", err)
	}
	if f.remove && policy.Name != api.RestartNo {
		return usagef("--rm and --restart %s: choose one (a container removed at its exit cannot be restarted)", policy)
	}
	// Refuse a command that cannot start before anything is created.
	if err := lookCommand(argv[0]); err != nil {
		return err
	}
	c := fs.client()
	if f.netMode != "" {
		return f.runInContainer(env, c, argv, members)
	}
	return f.runNew(env, c, fs.socket, argv, members)
}

// runFlags are the flags of `vxmesh run`.
type runFlags struct {
	detach, remove                    bool
	netws, aliases, services, publish stringList
	netMode, name, ip, restart        string
}

// register defines the flags on fs.
func (f *runFlags) register(fs *flagSet) {
	fs.BoolVar(&f.detach, "d", false, "detach: start the command in the background and print the container name")
	fs.Var(&f.netws, "network", "network `NET` to attach the new container to (repeatable: eth0, eth1, ...; the first gives the default route)")
	fs.StringVar(&f.netMode, "net", "", "container:NAME joins an existing container's network namespace")
	fs.StringVar(&f.name, "name", "", "container name")
	fs.StringVar(&f.ip, "ip", "", "IPv4 address (default: the next free one; with one --network only)")
	fs.BoolVar(&f.remove, "rm", false, "remove the container when the command exits (not with -d or --restart)")
	fs.StringVar(&f.restart, "restart", "", "restart `POLICY` when the command exits: no, on-failure[:MAX], always or unless-stopped (as Docker's)")
	fs.Var(&f.aliases, "alias", "additional DNS `NAME` on the network (repeatable)")
	fs.Var(&f.services, "service", "join service `NAME[:WEIGHT]` as a backend on the networks it shares with the container (repeatable; weight 1-1000, default 1)")
	fs.Var(&f.publish, "p", "publish the container's port on this host: `[HOSTIP:]HOSTPORT:PORT[/udp]` (repeatable; clients keep their address)")
}

// runInContainer is run --net container:NAME: the command starts in that
// container's namespaces, and no container is made.
func (f *runFlags) runInContainer(env *cliEnv, c *api.Client, argv []string, members []api.ServiceMember) error {
	target, ok := strings.CutPrefix(f.netMode, "container:")
	if !ok || target == "" {
		return usagef("--net %q: want container:NAME", f.netMode)
	}
	// No container is made: --name and --rm would name or remove
	// nothing of this command's own, so they are refused rather than
	// ignored (the command's output names the target).
	if len(f.netws) > 0 || f.ip != "" || len(f.aliases) > 0 || len(members) > 0 || len(f.publish) > 0 || f.name != "" || f.remove || f.restart != "" {
		return usagef("--net container:%s runs the command in that container, making no new one; --name, --rm, --restart, --network, --ip, --alias, --service and -p do not apply", target)
	}
	ctr, err := c.ContainerNamespace(target)
	if err != nil {
		return err
	}
	if err := enterable(ctr); err != nil {
		return err
	}
	return startIn(env, containerPaths(ctr), argv, f.detach, target, nil)
}

// runNew makes the container on its networks, starts the command in it
// and removes it again when the command did not start (or, with --rm,
// when it exits).
func (f *runFlags) runNew(env *cliEnv, c *api.Client, socket string, argv []string, members []api.ServiceMember) error {
	if len(f.netws) == 0 || f.name == "" {
		return usagef("want --network NET and --name NAME (or --net container:NAME)")
	}
	if f.ip != "" && len(f.netws) > 1 {
		return usagef("--ip %s: only with a single --network", f.ip)
	}
	svcs, err := splitServices(c, f.netws, members)
	if err != nil {
		return err
	}
	// The command as it starts now (environment, working directory):
	// what start and the restart policy run again.
	dir, err := os.Getwd()
	if err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	command := &api.Command{Argv: argv, Env: os.Environ(), Dir: dir}
	t0 := time.Now()
	ep, err := attachAll(env, c, attachSpec{name: f.name, netws: f.netws, ip: f.ip, aliases: f.aliases, publish: f.publish,
		command: command, restart: f.restart}, svcs)
	if err != nil {
		return err
	}
	t1 := time.Now()
	rep := &exitReport{socket: socket, container: f.name, timing: &monitorTiming{}}
	err = startIn(env, nsPaths{netns: ep.Netns, resolvConf: ep.ResolvConf, mountNS: ep.MountNS}, argv, f.detach, f.name, rep)
	if path := os.Getenv(runTimingEnv); path != "" && err == nil && f.detach {
		writeRunTiming(path, f.name, t1.Sub(t0), time.Since(t1), *rep.timing)
	}
	if _, exited := err.(exitError); err != nil && !exited {
		// The command never started: take the container away again.
		if rmErr := c.RemoveContainer(f.name); rmErr != nil {
			fmt.Fprintf(env.stderr, "vxmesh run: removing container %q after the failed start: %v\n", f.name, rmErr)
		}
		return err
	}
	if f.remove {
		if rmErr := c.RemoveContainer(f.name); rmErr != nil {
			fmt.Fprintf(env.stderr, "vxmesh run: --rm: %v\n", rmErr)
		}
	}
	return err
}

// attachSpec is what run asks attachAll for: the container's name, its
// networks in order, its address on the first, aliases, and the ports
// published to its first network's endpoint.
type attachSpec struct {
	name    string
	netws   []string
	ip      string
	aliases []string
	publish []string
	command *api.Command
	restart string
}

// attachAll makes container name on the first network and attaches it to
// the others in order (eth0, eth1, ...), publishing the ports on the
// first, joining on each network the
// services svcs lists for it. If one fails, the container is removed
// again.
func attachAll(env *cliEnv, c *api.Client, a attachSpec, svcs map[string][]api.ServiceMember) (api.Endpoint, error) {
	name, netws, aliases := a.name, a.netws, a.aliases
	ep, err := c.Attach(api.AttachRequest{Network: netws[0], Name: name, Create: true, IP: a.ip, Aliases: aliases, Services: svcs[netws[0]], Publish: a.publish,
		Command: a.command, Restart: a.restart})
	if err != nil {
		return ep, err
	}
	for _, n := range netws[1:] {
		if _, err := c.Attach(api.AttachRequest{Network: n, Name: name, Netns: ep.Netns, Aliases: aliases, Services: svcs[n]}); err != nil {
			if rmErr := c.RemoveContainer(name); rmErr != nil {
				fmt.Fprintf(env.stderr, "vxmesh run: removing container %q after the failed attach: %v\n", name, rmErr)
			}
			return ep, err
		}
	}
	return ep, nil
}

// startIn starts argv inside the namespace: detached (prints the container
// name, like docker run -d prints the id) or attached (returns its exit
// status as an exitError). A detached command with a report is the
// container's main process: a monitor waits for it and hands its exit
// status to the daemon, for ps.
func startIn(env *cliEnv, ns nsPaths, argv []string, detach bool, name string, report *exitReport) error {
	if detach && report != nil {
		_, mt, err := startMonitored(ns, argv, *report, env.stderr)
		if err != nil {
			return err
		}
		if report.timing != nil {
			*report.timing = mt
		}
		fmt.Fprintln(env.stdout, name)
		return nil
	}
	if detach {
		if _, err := startDetached(ns, argv, env.stderr); err != nil {
			return err
		}
		fmt.Fprintln(env.stdout, name)
		return nil
	}
	var onStart func(pid int)
	var client *api.Client
	if report != nil {
		// The command is the container's main process, as a monitor's
		// is: ps then says "exited N" once it is done, as after run -d.
		// Errors are not reported: the command's own status is the
		// exit status.
		client = api.NewClient(report.socket)
		onStart = func(pid int) { client.MainProcess(report.container, api.MainProcess{PID: pid}) }
	}
	code, pid, err := runAttached(ns, argv, env.stderr, onStart)
	if err != nil {
		return err
	}
	if client != nil {
		client.MainProcess(report.container, api.MainProcess{PID: pid, ExitStatus: &code})
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}

// containerPaths are the namespaces processes of ctr start in.
func containerPaths(ctr api.Container) nsPaths {
	return nsPaths{netns: ctr.Netns, resolvConf: ctr.ResolvConf, mountNS: ctr.MountNS}
}

// enterable refuses to enter a container whose namespace is gone (its
// path may name someone else's namespace now) or that is stopped (its
// main process exited: it is no name or backend any more; Docker refuses
// exec in a stopped container too). ctr is from ContainerNamespace.
func enterable(ctr api.Container) error {
	if ctr.State == api.ContainerGone {
		return fmt.Errorf("container %q: its network namespace %s is gone (remove it with vxmesh rm)", ctr.Name, ctr.Netns)
	}
	if strings.HasPrefix(ctr.Status, "exited ") || ctr.Status == api.StatusStopped || ctr.Status == api.StatusRestarting {
		return fmt.Errorf("container %q is not running (%s; start it with vxmesh start, or remove it with vxmesh rm)", ctr.Name, ctr.Status)
	}
	return nil
}

// lookCommand checks that argv0 can be started: a command that cannot is
// a failure that exits 127 (not found) or 126 (found, not executable: a
// directory too), as in a shell and docker run.
func lookCommand(argv0 string) error {
	_, err := exec.LookPath(argv0)
	if err == nil {
		return nil
	}
	code := exitNotFound
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EISDIR) {
		code = exitCannotExecute
	}
	return statusError{code: code, err: fmt.Errorf("command %q: %w", argv0, unwrapExec(err))}
}

func unwrapExec(err error) error {
	if e, ok := err.(*exec.Error); ok {
		return e.Err
	}
	return err
}

func cmdExec(env *cliEnv, args []string) error {
	fs := newFlags(env, "exec", false)
	detach := fs.Bool("d", false, "detach: run the command in the background")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usagef("want a container name, then the command")
	}
	name, argv := rest[0], rest[1:]
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:]
	}
	if len(argv) == 0 {
		return usagef("want a command after the container name")
	}
	if err := lookCommand(argv[0]); err != nil {
		return err
	}
	ctr, err := fs.client().ContainerNamespace(name)
	if err != nil {
		return err
	}
	if err := enterable(ctr); err != nil {
		return err
	}
	if *detach {
		_, err := startDetached(containerPaths(ctr), argv, env.stderr)
		return err
	}
	return startIn(env, containerPaths(ctr), argv, false, ctr.Name, nil)
}

func cmdAttach(env *cliEnv, args []string) error {
	fs := newFlags(env, "attach", true)
	var req api.AttachRequest
	fs.StringVar(&req.Network, "network", "", "network to attach to")
	fs.StringVar(&req.Name, "name", "", "container name")
	fs.StringVar(&req.Netns, "netns", "", "network namespace path (e.g. /run/netns/x or /proc/PID/ns/net)")
	fs.IntVar(&req.PID, "pid", 0, "a process whose network namespace to attach")
	fs.StringVar(&req.Docker, "docker", "", "a Docker container (started with --net=none) whose namespace to attach")
	fs.StringVar(&req.IP, "ip", "", "IPv4 address (default: the next free one)")
	fs.StringVar(&req.IfName, "ifname", "", "interface name inside the namespace (default eth0, then eth1...)")
	var aliases, services stringList
	fs.Var(&aliases, "alias", "additional DNS `NAME` on the network (repeatable)")
	fs.Var(&services, "service", "join service `NAME[:WEIGHT]` as a backend (repeatable; it must be on --network; weight 1-1000, default 1)")
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "only flags"); err != nil {
		return err
	}
	req.Aliases = aliases
	if req.Services, err = parseServiceFlags(services); err != nil {
		return err
	}
	if req.Network == "" || req.Name == "" {
		return usagef("want --network NET and --name NAME")
	}
	if req.Netns != "" {
		if _, err := os.Stat(req.Netns); err != nil {
			return fmt.Errorf("container %q: netns %s: %w", req.Name, req.Netns, unwrapPath(err))
		}
	}
	ep, err := fs.client().Attach(req)
	if err != nil {
		return err
	}
	return fs.output(env.stdout, ep, func() error {
		_, err := fmt.Fprintf(env.stdout, "%s %s %s %s\n", ep.Name, ep.IfName, ep.IP, ep.MAC)
		return err
	})
}

func unwrapPath(err error) error {
	if e, ok := err.(*os.PathError); ok {
		return e.Err
	}
	return err
}

func cmdDetach(env *cliEnv, args []string) error {
	fs := newFlags(env, "detach", false)
	netw := fs.String("network", "", "the network to detach from (needed when attached to several)")
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "a container name"); err != nil {
		return err
	}
	if err := fs.client().Detach(pos[0], *netw); err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, pos[0])
	return nil
}

func cmdRm(env *cliEnv, args []string) error {
	fs := newFlags(env, "rm", false)
	// Docker's docker rm -f: rm always stops the processes, so -f only
	// spares a Docker user's habit a usage error.
	fs.Bool("f", false, "accepted as in docker rm -f (rm always stops the container's processes)")
	fs.Bool("force", false, "same as -f")
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("want one or more container names")
	}
	return removeEach(env, pos, fs.client().RemoveContainer)
}

// stopTimeout is the -t (--time) flag of stop and restart: the seconds
// the processes get after SIGTERM (Docker's); unset, the daemon's
// default.
type stopTimeout struct {
	secs int
	set  bool
}

func (s *stopTimeout) String() string {
	if s == nil || !s.set {
		return ""
	}
	return strconv.Itoa(s.secs)
}

func (s *stopTimeout) Set(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return fmt.Errorf("want seconds, 0 or more")
	}
	s.secs, s.set = n, true
	return nil
}

// request is the request of stop and restart with s.
func (s *stopTimeout) request() api.StopRequest {
	if !s.set {
		return api.StopRequest{}
	}
	secs := s.secs
	return api.StopRequest{Timeout: &secs}
}

func cmdStop(env *cliEnv, args []string) error {
	return lifecycleCommand(env, "stop", args, true, func(c *api.Client, name string, req api.StopRequest) error {
		return c.StopContainer(name, req)
	})
}

func cmdStart(env *cliEnv, args []string) error {
	return lifecycleCommand(env, "start", args, false, func(c *api.Client, name string, _ api.StopRequest) error {
		return c.StartContainer(name)
	})
}

func cmdRestart(env *cliEnv, args []string) error {
	return lifecycleCommand(env, "restart", args, true, func(c *api.Client, name string, req api.StopRequest) error {
		return c.RestartContainer(name, req)
	})
}

// lifecycleCommand is stop, start or restart (name) of every container
// args name, printing each done, as Docker's do: one that fails does not
// stop the ones after it. withTimeout: the command takes -t.
func lifecycleCommand(env *cliEnv, name string, args []string, withTimeout bool, do func(*api.Client, string, api.StopRequest) error) error {
	fs := newFlags(env, name, false)
	var t stopTimeout
	if withTimeout {
		fs.Var(&t, "t", "`SECONDS` to wait after SIGTERM before SIGKILL (default 10; 0: SIGKILL at once)")
		fs.Var(&t, "time", "`SECONDS`, same as -t")
	}
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("want one or more container names")
	}
	req := t.request()
	c := fs.client()
	return removeEach(env, pos, func(ctr string) error { return do(c, ctr, req) })
}

// removeEach removes (or stops, starts...) every one of names with
// remove, as docker rm does: a name that fails does not stop the ones
// after it. The names done are printed; the errors are returned together (the exit status is 1 if
// any failed). A daemon that does not answer stops it at once.
func removeEach(env *cliEnv, names []string, remove func(string) error) error {
	var errs []error
	for _, name := range names {
		err := remove(name)
		if err == nil {
			fmt.Fprintln(env.stdout, name)
			continue
		}
		errs = append(errs, err)
		var unreachable *api.UnreachableError
		if errors.As(err, &unreachable) {
			break
		}
	}
	return errors.Join(errs...)
}

func cmdPs(env *cliEnv, args []string) error {
	fs := newFlags(env, "ps", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	cs, err := fs.client().Containers()
	if err != nil {
		return err
	}
	return fs.output(env.stdout, cs, func() error {
		t := newTable(env.stdout, "NAME", "STATUS", "ENDPOINTS", "PUBLISHED", "PIDS", "NETNS")
		for _, c := range cs {
			eps := make([]string, len(c.Endpoints))
			var ports []string
			for i, e := range c.Endpoints {
				eps[i] = e.Network + "=" + e.IP
				for _, p := range e.Published {
					if p.State != "up" {
						ports = append(ports, p.Spec+"(down)")
					} else {
						ports = append(ports, p.Spec)
					}
				}
			}
			pids := make([]string, len(c.PIDs))
			for i, p := range c.PIDs {
				pids[i] = strconv.Itoa(p)
			}
			status := c.Status
			if c.RestartCount > 0 {
				status = fmt.Sprintf("%s (restarts %d)", status, c.RestartCount)
			}
			t.row(c.Name, dash(status), dash(strings.Join(eps, ",")), dash(strings.Join(ports, ",")), dash(strings.Join(pids, ",")), c.Netns)
		}
		return t.flush()
	})
}

func cmdEndpointLs(env *cliEnv, args []string) error {
	fs := newFlags(env, "endpoint ls", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	eps, err := fs.client().Endpoints()
	if err != nil {
		return err
	}
	return fs.output(env.stdout, eps, func() error { return printEndpoints(env.stdout, eps) })
}
