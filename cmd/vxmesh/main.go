// Command vxmesh is the userspace overlay network for containers: the
// per-host daemon (`vxmesh daemon`) and the CLI that talks to it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/sandbox"
)

// exitError carries a process exit status through the command functions
// (for `run` and `exec`, whose status is the container command's).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(env *cliEnv, args []string) error
}

// cliEnv is what every subcommand gets: its output streams.
type cliEnv struct {
	stdout io.Writer
	stderr io.Writer
}

func commands() []command {
	return []command{
		{"daemon", "run the per-host daemon (root)", cmdDaemon},
		{"network", "create, list, inspect and remove networks", cmdNetwork},
		{"run", "start a command in a new container attached to a network", cmdRun},
		{"exec", "run a command inside a container", cmdExec},
		{"attach", "attach an existing network namespace to a network", cmdAttach},
		{"detach", "remove a container's interface from a network", cmdDetach},
		{"rm", "remove a container", cmdRm},
		{"ps", "list containers", cmdPs},
		{"endpoint", "list endpoints (endpoint ls)", cmdEndpoint},
		{"fdb", "show a network's forwarding database", cmdFDB},
		{"stats", "show switch counters", cmdStats},
		{"node", "list cluster nodes (node ls)", cmdNode},
		{"keygen", "print a new cluster key", cmdKeygen},
		{"key", "data keys of encrypted networks (key ls, rotate, export --wireshark)", cmdKey},
		{"demo", "build a demo overlay on this machine (root)", cmdDemo},
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == sandbox.NSInitArg {
		sandbox.NSInitMain(os.Args[2:])
		return
	}
	env := &cliEnv{stdout: os.Stdout, stderr: os.Stderr}
	os.Exit(runCLI(env, os.Args[1:]))
}

// runCLI dispatches args to a subcommand and returns the exit status.
func runCLI(env *cliEnv, args []string) int {
	args, err := globalSocket(args)
	if err != nil {
		fmt.Fprintf(env.stderr, "vxmesh: %v\n", err)
		return 2
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(env.stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(env, args[1:])
		var ee exitError
		switch {
		case err == nil:
			return 0
		case errors.As(err, &ee):
			return ee.code
		case errors.Is(err, flag.ErrHelp):
			return 0
		default:
			fmt.Fprintf(env.stderr, "vxmesh %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(env.stderr, "vxmesh: unknown command %q (see vxmesh help)\n", args[0])
	return 2
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
	if (args[0] == "network" || args[0] == "endpoint" || args[0] == "node" || args[0] == "key") && len(args) > 1 {
		out = append([]string{args[0], args[1]}, "--socket="+val)
		return append(out, args[2:]...), nil
	}
	return append(out, args[1:]...), nil
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "vxmesh: a userspace overlay network for containers")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: vxmesh COMMAND [flags] [args]")
	fmt.Fprintln(w)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Every command takes --socket PATH (env %s, default %s);\n", api.SocketEnv, api.DefaultSocket)
	fmt.Fprintln(w, "commands that print state take --format json. `vxmesh COMMAND -h` shows a command's flags.")
}

// flagSet is a subcommand's flags, with the --socket and --format flags
// every client command shares.
type flagSet struct {
	*flag.FlagSet
	socket string
	format string
}

func newFlags(env *cliEnv, name string, withFormat bool) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet("vxmesh "+name, flag.ContinueOnError)}
	fs.SetOutput(env.stderr)
	fs.StringVar(&fs.socket, "socket", "", "daemon API socket (env "+api.SocketEnv+", default "+api.DefaultSocket+")")
	if withFormat {
		fs.StringVar(&fs.format, "format", "table", "output format: table or json")
	}
	return fs
}

func (fs *flagSet) client() *api.Client { return api.NewClient(fs.socket) }

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
	if fs.format != "" && fs.format != "table" && fs.format != "json" {
		return nil, nil, fmt.Errorf("--format %q: want table or json", fs.format)
	}
	return pos, rest, nil
}

// wantArgs checks the number of positional arguments.
func wantArgs(pos []string, n int, what string) error {
	if len(pos) != n {
		return fmt.Errorf("want %s, got %d argument(s)%s", what, len(pos), extra(pos))
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
