//go:build linux

package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// NSInitArg is the hidden first argument with which Command re-executes the
// vxmesh binary inside the container. A main function must hand over to
// NSInitMain when it sees it:
//
//	if len(os.Args) > 1 && os.Args[1] == sandbox.NSInitArg {
//		sandbox.NSInitMain(os.Args[2:])
//	}
const NSInitArg = "__nsinit"

// DefaultInitPath is the executable Command re-executes as the init step:
// the running binary itself, even if it was replaced on disk since.
const DefaultInitPath = "/proc/self/exe"

// Exit codes of the init step, as Docker uses them.
const (
	ExitInitFailed   = 125 // setting up the container failed
	ExitCannotInvoke = 126 // the command exists but cannot be executed
	ExitNotFound     = 127 // the command was not found
	exitSignaledBase = 128 // + signal number, as shells report it
)

// nsinitArgsMinimum counts the init step's arguments: resolv.conf path,
// "--", argv[0].
const nsinitArgsMinimum = 3

// Cmd is a command to run inside a container's network namespace, in a
// private mount namespace where ResolvConf (if set) is bind-mounted over
// /etc/resolv.conf and /sys shows the container's interfaces. Set the
// exported fields before Start.
type Cmd struct {
	NetnsPath  string   // network namespace to run in
	ResolvConf string   // file bind-mounted over /etc/resolv.conf; none if ""
	Args       []string // command and arguments; Args[0] is looked up in PATH
	Env        []string // environment; the caller's if nil
	Dir        string   // working directory; the caller's if ""

	// Stdin, Stdout and Stderr are connected to the command as in
	// os/exec; nil means /dev/null. They are ignored when Detach is set.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer

	// Detach starts the command in a new session with its standard
	// streams on /dev/null; Start returns as soon as it runs and the
	// process is reaped in the background (Wait is not used).
	Detach bool

	// InitPath is the executable re-executed with NSInitArg to set up the
	// mount namespace before running Args; DefaultInitPath if empty. Its
	// main function must call NSInitMain.
	InitPath string

	// MountNS is a mount template (MakeMountTemplate) that the command's
	// mount namespace is copied from instead of the caller's; none if "".
	// If starting from it fails, the command starts from the caller's.
	MountNS string

	cmd *exec.Cmd
	// fromTemplate tells that Start started from MountNS.
	fromTemplate bool
	// templateErr is why Start did not start from MountNS.
	templateErr error
}

// TemplateErr returns why Start started the command from the caller's
// mount namespace although MountNS was set (the template was gone, or the
// working directory not in it); nil if it started from the template, or
// none was set.
func (c *Cmd) TemplateErr() error { return c.templateErr }

// Command returns a Cmd that runs argv inside the network namespace at
// nsPath with resolvConf bind-mounted over /etc/resolv.conf.
func Command(nsPath, resolvConf string, argv []string) *Cmd {
	return &Cmd{NetnsPath: nsPath, ResolvConf: resolvConf, Args: argv}
}

// Start starts the command. The process is forked from a locked thread
// switched into the namespace (and the thread is restored or discarded
// afterwards), and into the mount template if MountNS is set; the child
// unshares its mount namespace, which Go makes private, and runs the init
// step, which execs Args.
func (c *Cmd) Start() error {
	if c.cmd != nil {
		return errors.New("sandbox: command already started")
	}
	if len(c.Args) == 0 || c.Args[0] == "" {
		return fmt.Errorf("netns %q: no command to run", c.NetnsPath)
	}
	if _, err := NetnsIdentity(c.NetnsPath); err != nil {
		return err
	}
	if c.ResolvConf != "" {
		if _, err := os.Stat(c.ResolvConf); err != nil {
			return fmt.Errorf("netns %q: resolv.conf: %w", c.NetnsPath, err)
		}
	}
	var cmd *exec.Cmd
	var err error
	if c.MountNS != "" {
		cmd = c.execCmd(true)
		err = runInMountTemplate(c.MountNS, c.NetnsPath, sameDirThen(cmd.Dir, cmd.Start))
		c.templateErr = err
	}
	if c.MountNS == "" || err != nil {
		// Without a template, or if the template is gone or the working
		// directory is not in it: a copy of the caller's namespace.
		cmd = c.execCmd(false)
		err = RunInNetns(c.NetnsPath, cmd.Start)
	} else {
		c.fromTemplate = true
	}
	if err != nil {
		return fmt.Errorf("netns %q: start %q: %w", c.NetnsPath, c.Args[0], err)
	}
	c.cmd = cmd
	if c.Detach {
		go cmd.Wait() // reap it; nobody waits for a detached command
	}
	return nil
}

// execCmd returns the exec.Cmd that Start starts. fromTemplate keeps the
// caller's working directory (entering a mount namespace moves the thread
// to its root) unless Dir is set.
func (c *Cmd) execCmd(fromTemplate bool) *exec.Cmd {
	initPath := c.InitPath
	if initPath == "" {
		initPath = DefaultInitPath
	}
	dir := c.Dir
	if dir == "" && fromTemplate {
		dir, _ = os.Getwd()
	}
	args := append([]string{"vxmesh", NSInitArg, c.ResolvConf, "--"}, c.Args...)
	cmd := &exec.Cmd{
		Path: initPath,
		Args: args,
		Env:  c.Env,
		Dir:  dir,
		SysProcAttr: &syscall.SysProcAttr{
			Unshareflags: unix.CLONE_NEWNS,
			Setsid:       c.Detach,
		},
	}
	if !c.Detach {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = c.Stdin, c.Stdout, c.Stderr
	}
	return cmd
}

// runInMountTemplate calls fn (which forks) on a locked OS thread switched
// into the mount namespace at mntPath and the network namespace at
// netPath. The thread then returns to the caller's namespaces but keeps
// file system information (working directory) of its own, so it is
// discarded; it is switched back for the case it is the main thread,
// which the runtime parks instead and whose namespaces /proc/PID/ns shows
// as the process's (a process seen in a container's network namespace
// is one of its processes, and killed with it).
func runInMountTemplate(mntPath, netPath string, fn func() error) error {
	var fds [4]int // template, netns, and the caller's mount and network namespaces
	for i, p := range []string{mntPath, netPath, "/proc/thread-self/ns/mnt", "/proc/thread-self/ns/net"} {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("namespace %s: %w", p, err) // those opened are closed below
		}
		fds[i] = fd
		defer unix.Close(fd)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the runtime ends the thread with the goroutine.
		// A thread sharing its file system information (every Go thread)
		// cannot change its mount namespace.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("mount template: unshare: %w", err)
			return
		}
		err := enterAndRun(fds[0], fds[1], fn)
		// Back before the caller goes on (it may list the namespace's
		// processes); the error is fn's or entering's.
		unix.Setns(fds[3], unix.CLONE_NEWNET)
		unix.Setns(fds[2], unix.CLONE_NEWNS)
		if err != nil {
			err = fmt.Errorf("mount template %s, netns %q: %w", mntPath, netPath, err)
		}
		errc <- err
	}()
	return <-errc
}

// sameDirThen returns a function that calls start if the path dir names,
// where it is called (in the template), the directory it names here; the
// template may hold another directory at that path, the one under a mount
// made after it.
func sameDirThen(dir string, start func() error) func() error {
	var here unix.Stat_t
	hereErr := unix.Stat(dir, &here)
	return func() error {
		var there unix.Stat_t
		if err := unix.Stat(dir, &there); err != nil {
			return fmt.Errorf("working directory %s: %w", dir, err)
		}
		if hereErr != nil || here.Dev != there.Dev || here.Ino != there.Ino {
			return fmt.Errorf("working directory %s: another directory there (under a mount made after the template)", dir)
		}
		return start()
	}
}

// enterAndRun switches the calling thread into the mount namespace open at
// mnt and the network namespace open at net, and calls fn.
func enterAndRun(mnt, net int, fn func() error) error {
	if err := unix.Setns(mnt, unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("enter the mount namespace: %w", err)
	}
	if err := unix.Setns(net, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter the network namespace: %w", err)
	}
	return fn()
}

// Wait waits for a started, attached command to exit. Like os/exec, a
// non-zero exit is an *exec.ExitError; see ExitStatus.
func (c *Cmd) Wait() error {
	if c.cmd == nil {
		return errors.New("sandbox: command not started")
	}
	if c.Detach {
		return errors.New("sandbox: Wait on a detached command")
	}
	return c.cmd.Wait()
}

// Run starts the command and waits for it (returns at once when Detach
// is set).
func (c *Cmd) Run() error {
	if err := c.Start(); err != nil {
		return err
	}
	if c.Detach {
		return nil
	}
	return c.Wait()
}

// PID returns the process ID of the started command (the init step execs
// Args in place, so it is the command's own PID), or 0 before Start.
func (c *Cmd) PID() int {
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// Signal sends sig to the started command.
func (c *Cmd) Signal(sig os.Signal) error {
	if c.cmd == nil || c.cmd.Process == nil {
		return errors.New("sandbox: command not started")
	}
	return c.cmd.Process.Signal(sig)
}

// ExitStatus turns the result of Run or Wait into the exit status a shell
// would report: 0 for nil, the exit code, 128+N for death by signal N, and
// ExitInitFailed for errors that are not an exit status (start failed).
func ExitStatus(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return ExitInitFailed
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return exitSignaledBase + int(ws.Signal())
	}
	return ee.ExitCode()
}

// NSInitMain is the init step run by Command inside the container's fresh
// mount namespace; args are the arguments after NSInitArg. It bind-mounts
// the resolv.conf file over /etc/resolv.conf, mounts a sysfs that shows
// the namespace's interfaces, and execs the command (looked up in PATH).
// It never returns: on failure it prints one line to stderr and exits with
// ExitInitFailed, ExitCannotInvoke or ExitNotFound.
func NSInitMain(args []string) {
	die := func(code int, format string, a ...any) {
		fmt.Fprintf(os.Stderr, "vxmesh: "+format+"\n", a...)
		os.Exit(code)
	}
	if len(args) < nsinitArgsMinimum || args[1] != "--" {
		die(ExitInitFailed, "%s: usage: %s RESOLV_CONF -- COMMAND [ARG...]", NSInitArg, NSInitArg)
	}
	resolv, argv := args[0], args[2:]

	// Command unshared the mount namespace and Go made "/" private in it,
	// so these mounts are invisible to the host. A sysfs mounted from
	// inside the network namespace lists its interfaces under
	// /sys/class/net, as with `ip netns exec`; it is a convenience only.
	_ = unix.Mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	// The copy holds a bind mount of every named network namespace (each
	// container's) under NetnsDir; the container needs none of them.
	// Detached, they no longer make the kernel hold, with N containers,
	// N copies of up to N mounts. (A namespace whose name is deleted is
	// unmounted from every copy by the kernel anyway.) Not a mount point:
	// nothing to do.
	_ = unix.Unmount(NetnsDir, unix.MNT_DETACH)
	if resolv != "" {
		if err := unix.Mount(resolv, "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
			die(ExitInitFailed, "bind-mount %s over /etc/resolv.conf: %v", resolv, err)
		}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		die(ExitNotFound, "exec %q: %v", argv[0], err)
	}
	err = syscall.Exec(path, argv, os.Environ())
	code := ExitNotFound
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENOEXEC) || errors.Is(err, unix.EISDIR) {
		code = ExitCannotInvoke
	}
	die(code, "exec %q: %v", argv[0], err)
}
