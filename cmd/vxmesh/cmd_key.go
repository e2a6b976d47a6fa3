package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

func keyLs(env *cliEnv, args []string) error {
	fs := newFlags(env, "key ls", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	k, err := fs.client().Keys()
	if err != nil {
		return err
	}
	return fs.output(env.stdout, k, func() error { return printKeys(env.stdout, k) })
}

func keyRotate(env *cliEnv, args []string) error {
	fs := newFlags(env, "key rotate", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	k, err := fs.client().RotateKey()
	if err != nil {
		return err
	}
	return fs.output(env.stdout, k, func() error { return printKeys(env.stdout, k) })
}

func printKeys(w io.Writer, k api.Keys) error {
	if k.Version == 0 {
		fmt.Fprintf(w, "No data keys (they are created with the first encrypted network). Rotator: %s\n", dash(k.Rotator))
		return nil
	}
	fmt.Fprintf(w, "Ring version %d, primary key %d, rotator %s, rotation every %s\n", k.Version, k.Primary, dash(k.Rotator), fmtSeconds(k.RotationInterval))
	t := newTable(w, "ID", "STATE", "CREATED")
	for _, ki := range k.Keys {
		t.row(ki.ID, ki.State, ki.Created.Format("2006-01-02 15:04:05 MST"))
	}
	if err := t.flush(); err != nil {
		return err
	}
	nodes := make([]string, 0, len(k.Nodes))
	var refused []string
	for _, n := range k.Nodes {
		nodes = append(nodes, fmt.Sprintf("%s=%d", n.Node, n.Installed))
		if n.RingsRefused > 0 {
			refused = append(refused, fmt.Sprintf("%s=%d", n.Node, n.RingsRefused))
		}
	}
	sort.Strings(nodes)
	sort.Strings(refused)
	fmt.Fprintf(w, "Installed: %s\n", dash(strings.Join(nodes, " ")))
	if len(refused) > 0 {
		fmt.Fprintf(w, "Rings refused (older, or bringing back a retired key): %s\n", strings.Join(refused, " "))
	}
	return nil
}

// fmtSeconds prints seconds as a duration ("12h0m0s").
func fmtSeconds(s float64) string {
	return time.Duration(s * float64(time.Second)).String()
}

func keyExport(env *cliEnv, args []string) error {
	fs := newFlags(env, "key export", false)
	wireshark := fs.Bool("wireshark", false, "print this node's SAs, KEYS INCLUDED, as lines of Wireshark's ESP SA table (esp_sa)")
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	if !*wireshark {
		return usagef("want --wireshark (the only export format)")
	}
	k, err := fs.client().ExportKeys()
	if err != nil {
		return err
	}
	fmt.Fprint(env.stdout, k.ESPSA)
	return nil
}
