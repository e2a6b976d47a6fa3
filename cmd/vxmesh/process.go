package main

import (
	"os"
	"os/signal"

	"github.com/vxmesh/vxmesh/sandbox"
)

// startDetached starts argv in the container's namespace in a session of
// its own and returns its PID without waiting.
func startDetached(netns, resolvConf string, argv []string) (int, error) {
	c := sandbox.Command(netns, resolvConf, argv)
	c.Detach = true
	if err := c.Start(); err != nil {
		return 0, err
	}
	return c.PID(), nil
}

// runAttached runs argv in the container's namespace with this process's
// standard streams and returns its exit status. Interrupts reach the
// command (it shares the terminal's process group); the CLI itself waits.
func runAttached(netns, resolvConf string, argv []string) (int, error) {
	c := sandbox.Command(netns, resolvConf, argv)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	// Catch (not ignore: an ignored signal stays ignored across exec) the
	// interrupt so that the CLI outlives the command and reports its status.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt)
	defer signal.Stop(sigs)
	if err := c.Start(); err != nil {
		return 0, err
	}
	return sandbox.ExitStatus(c.Wait()), nil
}
