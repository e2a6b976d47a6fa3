package main

import (
	"fmt"
	"runtime/debug"
)

// version is the release this binary was built as, set by the linker:
// go build -ldflags "-X main.version=v1.2.3" (the Makefile's build does).
// It is the only package-level variable, and nothing writes it at run time.
var version string

func cmdVersion(env *cliEnv, args []string) error {
	fs := newFlags(env, "version", false)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	info, _ := debug.ReadBuildInfo()
	fmt.Fprintln(env.stdout, versionString(version, info))
	return nil
}

// versionString describes the build: the -X version (else the module
// version, else "devel"), the VCS revision and whether the tree had
// uncommitted changes, and the Go version.
func versionString(v string, info *debug.BuildInfo) string {
	if info == nil {
		if v == "" {
			v = "devel"
		}
		return "vxmesh " + v
	}
	if v == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	if v == "" {
		v = "devel"
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	out := "vxmesh " + v
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		out += " (revision " + rev
		if modified == "true" {
			out += ", modified"
		}
		out += ")"
	}
	return fmt.Sprintf("%s %s", out, info.GoVersion)
}
