// Command vxmesh is the userspace overlay network for containers: the
// per-host daemon (`vxmesh daemon`) and the CLI that talks to it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/sandbox"
)

// exitError carries a process exit status through the command functions
// (for `run` and `exec`, whose status is the container command's).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// statusError is a failure printed as any other, but exiting with its
// own status (a command that could not start: 127 or 126).
type statusError struct {
	code int
	err  error
}

func (e statusError) Error() string { return e.err.Error() }
func (e statusError) Unwrap() error { return e.err }

// The exit statuses of a command that could not start, as a shell's.
const (
	exitCannotExecute = 126
	exitNotFound      = 127
)

// usageError is a mistake in the command line (unknown command or flag,
// wrong arguments, a bad flag value): it exits with status 2, while
// failures of the operation itself exit with status 1.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// usagef formats a usageError.
func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// Exit statuses of the CLI (besides a container command's own).
const (
	exitFailure = 1 // the operation failed (daemon, kernel, network)
	exitUsage   = 2 // the command line is wrong
)

// command is one subcommand, or a group of them (network, key, ...).
type command struct {
	name    string
	aliases []string
	args    string // positional arguments and flags, as the usage line shows them
	summary string
	example string
	run     func(env *cliEnv, args []string) error
	subs    []command
}

// cliEnv is what every subcommand gets: its output streams, and how often
// a create that takes long asks what it waits for (0: claimPollEvery).
type cliEnv struct {
	stdout    io.Writer
	stderr    io.Writer
	claimPoll time.Duration
}

func commands() []command {
	return []command{
		{name: "daemon", args: "[flags]", summary: "run the per-host daemon (root)",
			example: "sudo vxmesh daemon --node h1 --join 192.0.2.10 >>/var/log/vxmesh.log 2>&1", run: cmdDaemon},
		{name: "network", summary: "create, list, inspect, update and remove networks", subs: []command{
			{name: "create", args: "NAME [flags]", summary: "create a cluster-wide network",
				example: "vxmesh network create web --subnet 10.0.1.0/24 --encrypted", run: networkCreate},
			{name: "ls", aliases: []string{"list"}, args: "[flags]", summary: "list networks",
				example: "vxmesh network ls --format 'table {{.Name}}\\t{{.Subnet}}\\t{{.Encrypted}}'", run: networkLs},
			{name: "inspect", args: "NAME [flags]", summary: "show a network with its endpoints, peers and SAs",
				example: "vxmesh network inspect web", run: networkInspect},
			{name: "update", args: "NAME --add-vtep IP | --rm-vtep IP", summary: "change a network's external VTEPs",
				example: "vxmesh network update web --add-vtep 192.0.2.50", run: networkUpdate},
			{name: "rm", aliases: []string{"remove"}, args: "NAME...", summary: "remove networks without endpoints",
				example: "vxmesh network rm web", run: networkRm},
		}},
		{name: "service", summary: "create, list, inspect, update and remove services (VIPs balanced in the switch)", subs: []command{
			{name: "create", args: "NAME --network NET [flags]", summary: "create a cluster-wide service with a VIP on each network",
				example: "vxmesh service create api --network web --port 80/tcp --scheduler maglev", run: serviceCreate},
			{name: "ls", aliases: []string{"list"}, args: "[flags]", summary: "list services",
				example: "vxmesh service ls --format '{{.Name}} {{json .VIPs}}'", run: serviceLs},
			{name: "inspect", args: "NAME [flags]", summary: "show a service with its backends and this node's counters",
				example: "vxmesh service inspect api", run: serviceInspect},
			{name: "update", args: "NAME [flags]", summary: "change a service's networks, VIPs or policy",
				example: "vxmesh service update api --network-add db --scheduler lc", run: serviceUpdate},
			{name: "ps", args: "NAME [flags]", summary: "list a service's backends on every node",
				example: "vxmesh service ps api", run: servicePs},
			{name: "rm", aliases: []string{"remove"}, args: "NAME...", summary: "remove services (their backends stay, no longer backends)",
				example: "vxmesh service rm api", run: serviceRm},
		}},
		{name: "run", args: "[flags] (--network NET --name NAME | --net container:NAME) -- COMMAND [ARG...]", summary: "start a command in a new container attached to a network",
			example: "vxmesh run -d --network web --name c1 -- sleep infinity", run: cmdRun},
		{name: "exec", args: "[flags] CONTAINER [--] COMMAND [ARG...]", summary: "run a command inside a container",
			example: "vxmesh exec c1 -- ping -c 3 10.0.1.3", run: cmdExec},
		{name: "attach", args: "--network NET --name NAME (--netns PATH | --pid PID | --docker CONTAINER) [flags]",
			summary: "attach an existing network namespace to a network",
			example: "vxmesh attach --network web --name db --netns /run/netns/db", run: cmdAttach},
		{name: "detach", args: "CONTAINER [--network NET]", summary: "remove a container's interface from a network",
			example: "vxmesh detach db --network web", run: cmdDetach},
		{name: "stop", args: "[-t SECONDS] CONTAINER...", summary: "stop containers made by run (SIGTERM, SIGKILL after the timeout)",
			example: "vxmesh stop -t 5 c1", run: cmdStop},
		{name: "start", args: "CONTAINER...", summary: "start stopped containers made by run again",
			example: "vxmesh start c1", run: cmdStart},
		{name: "restart", args: "[-t SECONDS] CONTAINER...", summary: "stop and start containers made by run",
			example: "vxmesh restart c1", run: cmdRestart},
		{name: "rm", args: "[-f] CONTAINER...", summary: "remove containers (their processes are stopped)",
			example: "vxmesh rm c1 c2", run: cmdRm},
		{name: "ps", args: "[flags]", summary: "list containers with their status",
			example: "vxmesh ps --format 'table {{.Name}}\\t{{.Status}}'", run: cmdPs},
		{name: "endpoint", summary: "endpoints of this host", subs: []command{
			{name: "ls", aliases: []string{"list"}, args: "[flags]", summary: "list this host's endpoints",
				example: "vxmesh endpoint ls --format '{{.Name}} {{.IP}}'", run: cmdEndpointLs},
		}},
		{name: "fdb", args: "NETWORK [flags]", summary: "show a network's forwarding database",
			example: "vxmesh fdb web", run: cmdFDB},
		{name: "stats", args: "[flags]", summary: "show switch, tunnel, service and DNS counters",
			example: "vxmesh stats --format json", run: cmdStats},
		{name: "capture", args: "(CONTAINER [--network NET] | --network NET --tunnel) [-w FILE|-] [-c N]",
			summary: "capture the frames at a container's switch port or a network's tunnel port",
			example: "vxmesh capture c1 -c 10 -w - | tshark -r -", run: cmdCapture},
		{name: "trace", args: "--network NET --from CONTAINER|IP --to IP[:PORT/PROTO] [--size N] [flags]",
			summary: "show what the data plane would do with a container's packet, step by step (nothing is sent)",
			example: "vxmesh trace --network web --from c1 --to 10.0.1.100:80/tcp", run: cmdTrace},
		{name: "node", summary: "cluster nodes", subs: []command{
			{name: "ls", aliases: []string{"list"}, args: "[flags]", summary: "list cluster nodes (* marks this one)",
				example: "vxmesh node ls", run: cmdNodeLs},
		}},
		{name: "keygen", args: "", summary: "print a new cluster key",
			example: "vxmesh keygen | sudo tee /etc/vxmesh/cluster.key", run: cmdKeygen},
		{name: "key", summary: "data keys of encrypted networks", subs: []command{
			{name: "ls", aliases: []string{"list"}, args: "[flags]", summary: "show the data key ring (no key material)",
				example: "vxmesh key ls", run: keyLs},
			{name: "rotate", args: "[flags]", summary: "rotate the data keys now",
				example: "vxmesh key rotate", run: keyRotate},
			{name: "export", args: "--wireshark", summary: "print this node's SA keys for Wireshark (secret!)",
				example: "sudo vxmesh key export --wireshark > esp_sa", run: keyExport},
		}},
		{name: "demo", args: "", summary: "build a demo overlay on this machine (root)",
			example: "sudo vxmesh demo", run: cmdDemo},
		{name: "version", args: "", summary: "print the version of this binary",
			example: "vxmesh version", run: cmdVersion},
		{name: "help", args: "[COMMAND [SUBCOMMAND]]", summary: "show help for a command",
			example: "vxmesh help network create"},
	}
}

// init keeps main on the process's main thread for good (init functions
// run on it; see runtime.LockOSThread), so that no other goroutine ever
// runs there. The daemon's goroutines that work in a container's network
// namespace switch their thread into it, some for as long as the container
// has published ports (FastSockets). /proc/PID/ns/net is the main thread's
// namespace: on the main thread, such a goroutine made the daemon one of
// the container's processes for `ip netns pids` (and any tool that kills
// a namespace's processes so) and kept the namespace alive.
func init() { runtime.LockOSThread() }

func main() {
	if len(os.Args) > 1 && os.Args[1] == sandbox.NSInitArg {
		sandbox.NSInitMain(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == monitorArg {
		os.Exit(monitorMain(os.Args[2:]))
	}
	env := &cliEnv{stdout: os.Stdout, stderr: os.Stderr}
	os.Exit(runCLI(env, os.Args[1:]))
}

// runCLI dispatches args to a subcommand and returns the exit status.
func runCLI(env *cliEnv, args []string) int {
	args, err := globalSocket(args)
	if err != nil {
		fmt.Fprintf(env.stderr, "vxmesh: %v\n", err)
		return exitUsage
	}
	if len(args) == 0 {
		fmt.Fprintln(env.stderr, "vxmesh: want a command (see vxmesh help)")
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help":
		usage(env.stdout)
		return 0
	case "-v", "--version":
		args = []string{"version"}
	case "help":
		return runHelp(env, args[1:])
	}
	path, c, rest, err := lookup(commands(), args)
	if err != nil {
		fmt.Fprintf(env.stderr, "vxmesh%s: %v\n", prefixPath(path), err)
		return exitUsage
	}
	if c.run == nil { // a group given -h
		groupUsage(env.stdout, path, c)
		return 0
	}
	return report(env, path, c.run(env, rest))
}

func prefixPath(path []string) string {
	if len(path) == 0 {
		return ""
	}
	return " " + strings.Join(path, " ")
}

// report turns a command's error into its exit status, printing it on
// one line prefixed with the full command ("vxmesh network create: ...").
func report(env *cliEnv, path []string, err error) int {
	var ee exitError
	var ue usageError
	var se statusError
	name := "vxmesh " + strings.Join(path, " ")
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(env.stderr, "%s: %v (see vxmesh help %s)\n", name, oneLine(err), strings.Join(path, " "))
		return exitUsage
	case errors.As(err, &se):
		fmt.Fprintf(env.stderr, "%s: %v\n", name, oneLine(err))
		return se.code
	default:
		fmt.Fprintf(env.stderr, "%s: %v\n", name, oneLine(err))
		return exitFailure
	}
}

// oneLine keeps an error message on one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

// lookup finds the command args name (a group's subcommand too) and
// returns its path, the command and the arguments left. A group given
// -h, --help or help (or nothing but that) returns the group itself.
func lookup(cmds []command, args []string) (path []string, c command, rest []string, err error) {
	for {
		found, ok := find(cmds, args[0])
		if !ok {
			return path, c, nil, unknown(cmds, args[0], path)
		}
		path, c, args = append(path, found.name), found, args[1:]
		if found.subs == nil {
			return path, c, args, nil
		}
		if len(args) == 0 {
			return path, c, nil, fmt.Errorf("want a subcommand: %s", names(found.subs))
		}
		if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			return path, c, nil, nil
		}
		if strings.HasPrefix(args[0], "-") {
			return path, c, nil, fmt.Errorf("want a subcommand (%s) before the flags, got %q", names(found.subs), args[0])
		}
		cmds = found.subs
	}
}

func find(cmds []command, name string) (command, bool) {
	for _, c := range cmds {
		if c.name == name {
			return c, true
		}
		for _, a := range c.aliases {
			if a == name {
				return c, true
			}
		}
	}
	return command{}, false
}

func names(cmds []command) string {
	var out []string
	for _, c := range cmds {
		out = append(out, c.name)
	}
	return strings.Join(out, ", ")
}

// unknown is the error for a mistyped command, with the closest known
// name when one is near enough.
func unknown(cmds []command, name string, path []string) error {
	what := "command"
	if len(path) > 0 {
		what = "subcommand"
	}
	best, bestD := "", 0
	for _, c := range cmds {
		for _, n := range append([]string{c.name}, c.aliases...) {
			if d := editDistance(name, n); best == "" || d < bestD {
				best, bestD = c.name, d
			}
		}
	}
	// Near enough: at most a third of the name wrong (and at least one
	// edit allowed), or the name a prefix of a command's.
	if best != "" && (bestD <= max(1, len(name)/3) || (len(name) >= 2 && strings.HasPrefix(best, name))) {
		return fmt.Errorf("unknown %s %q: did you mean %q? (see vxmesh help%s)", what, name, best, prefixPath(path))
	}
	return fmt.Errorf("unknown %s %q (see vxmesh help%s)", what, name, prefixPath(path))
}

// editDistance is the Damerau-Levenshtein (optimal string alignment)
// distance between a and b: insertions, deletions, substitutions and
// transpositions of adjacent characters.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}

// runHelp prints the help of the command named by args (all commands if
// none) to stdout.
func runHelp(env *cliEnv, args []string) int {
	// Flags (--socket S, wherever given) do not change the help.
	var words []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--socket" || a == "-socket":
			i++
		case !strings.HasPrefix(a, "-"):
			words = append(words, a)
		}
	}
	args = words
	if len(args) == 0 {
		usage(env.stdout)
		return 0
	}
	path, c, rest, err := lookup(commands(), args)
	if err == nil && len(rest) > 0 {
		err = fmt.Errorf("unknown argument %q after %q", rest[0], strings.Join(path, " "))
	}
	if err != nil && c.subs != nil && len(rest) == 0 && len(path) == len(args) {
		err = nil // `help network`: the group
	}
	if err != nil {
		fmt.Fprintf(env.stderr, "vxmesh help: %v\n", err)
		return exitUsage
	}
	switch {
	case c.subs != nil:
		groupUsage(env.stdout, path, c)
	case c.run == nil: // help itself
		commandUsage(env.stdout, path, c, nil)
	default:
		// The command prints its own flags when given -h.
		return report(env, path, c.run(env, []string{"-h"}))
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "vxmesh: a userspace overlay network for containers")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: vxmesh COMMAND [SUBCOMMAND] [flags] [args]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Every client command takes --socket PATH (env %s, default %s);\n", api.SocketEnv, api.DefaultSocket)
	fmt.Fprintln(w, "commands that print state take --format table|json|TEMPLATE (a Go template as")
	fmt.Fprintln(w, "Docker's: '{{.Name}}', '{{json .}}', 'table {{.Name}}\\t{{.IP}}').")
	fmt.Fprintln(w, "`vxmesh help COMMAND` or `vxmesh COMMAND -h` shows a command's arguments, flags and an example.")
	fmt.Fprintln(w, "Exit status: 0 success, 1 the operation failed, 2 a usage error; run and exec exit with the command's status.")
}

func groupUsage(w io.Writer, path []string, c command) {
	fmt.Fprintf(w, "vxmesh %s: %s\n\nUsage: vxmesh %s SUBCOMMAND [flags] [args]\n\nSubcommands:\n", strings.Join(path, " "), c.summary, strings.Join(path, " "))
	for _, s := range c.subs {
		fmt.Fprintf(w, "  %-8s %s\n", s.name, s.summary)
	}
	fmt.Fprintf(w, "\nExample:\n  %s\n", c.subs[0].example)
}

// commandUsage prints a command's usage line, example and flags.
func commandUsage(w io.Writer, path []string, c command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "vxmesh %s: %s\n\nUsage: vxmesh %s", strings.Join(path, " "), c.summary, strings.Join(path, " "))
	if c.args != "" {
		fmt.Fprintf(w, " %s", c.args)
	}
	fmt.Fprintf(w, "\n\nExample:\n  %s\n", c.example)
	if fs == nil {
		return
	}
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if first {
			fmt.Fprintln(w, "\nFlags:")
			first = false
		}
		typ, help := flag.UnquoteUsage(f)
		name := "--" + f.Name
		if len(f.Name) == 1 {
			name = "-" + f.Name
		}
		if typ != "" {
			name += " " + strings.ToUpper(typ)
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			help += fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, "  %s\n        %s\n", name, help)
	})
}

// commandByPath returns the command named by a space-separated path
// ("network create").
func commandByPath(name string) (command, bool) {
	cmds := commands()
	var c command
	for _, n := range strings.Fields(name) {
		var ok bool
		if c, ok = find(cmds, n); !ok {
			return command{}, false
		}
		cmds = c.subs
	}
	return c, true
}

// globalSocket moves a --socket flag given before the command word to the
// command's own flags, so `vxmesh --socket S network ls` works too.
func globalSocket(args []string) ([]string, error) {
	if len(args) == 0 {
		return args, nil
	}
	a := args[0]
	var val string
	switch {
	case a == "--socket" || a == "-socket":
		if len(args) < 2 {
			return nil, fmt.Errorf("--socket: want a path")
		}
		val, args = args[1], args[2:]
	case strings.HasPrefix(a, "--socket=") || strings.HasPrefix(a, "-socket="):
		val, args = a[strings.Index(a, "=")+1:], args[1:]
	default:
		return args, nil
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("want a command after --socket %s", val)
	}
	out := append([]string{args[0]}, "--socket="+val)
	// Subcommand groups take their verb first: network create, endpoint ls.
	// A group without one is left bare, for lookup to ask for the verb.
	if c, ok := find(commands(), args[0]); ok && c.subs != nil {
		if len(args) == 1 {
			return args, nil
		}
		out = append([]string{args[0], args[1]}, "--socket="+val)
		return append(out, args[2:]...), nil
	}
	return append(out, args[1:]...), nil
}

// flagSet is a subcommand's flags, with the --socket and --format flags
// every client command shares.
type flagSet struct {
	*flag.FlagSet
	socket string
	format string
	tmpl   *outputTemplate
	help   func()
}

// newFlags returns the flags of the command at path ("network create").
// Flag errors are returned, not printed; -h prints the command's usage,
// example and flags to env.stdout.
func newFlags(env *cliEnv, path string, withFormat bool) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet("vxmesh "+path, flag.ContinueOnError)}
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // the flag package calls it on errors too; see Parse
	fs.help = func() {
		c, _ := commandByPath(path)
		commandUsage(env.stdout, strings.Fields(path), c, fs.FlagSet)
	}
	fs.StringVar(&fs.socket, "socket", "", "daemon API socket (env "+api.SocketEnv+", default "+api.DefaultSocket+")")
	if withFormat {
		fs.StringVar(&fs.format, "format", "table", "output format: table, json, or a Go template ('{{.Name}}', '{{json .}}', 'table {{.Name}}\\t{{.IP}}')")
	}
	return fs
}

func (fs *flagSet) client() *api.Client { return api.NewClient(fs.socket) }

// Parse parses flags up to the first positional argument, like
// flag.FlagSet.Parse, but returns flag mistakes as usage errors.
func (fs *flagSet) Parse(args []string) error {
	err := fs.FlagSet.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.help()
		return err
	}
	if err != nil {
		return usageError{err.Error()}
	}
	return nil
}

// parse parses flags that may stand before, between or after positional
// arguments; everything after "--" is returned separately, untouched.
func (fs *flagSet) parse(args []string) (pos, rest []string, err error) {
	for i, a := range args {
		if a == "--" {
			args, rest = args[:i], args[i+1:]
			if rest == nil {
				rest = []string{}
			}
			break
		}
	}
	for {
		if err := fs.Parse(args); err != nil {
			return nil, nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if err := fs.parseFormat(); err != nil {
		return nil, nil, err
	}
	return pos, rest, nil
}

// wantArgs checks the number of positional arguments.
func wantArgs(pos []string, n int, what string) error {
	if len(pos) != n {
		return usagef("want %s, got %d argument(s)%s", what, len(pos), extra(pos))
	}
	return nil
}

func extra(pos []string) string {
	if len(pos) == 0 {
		return ""
	}
	return ": " + strings.Join(pos, " ")
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
