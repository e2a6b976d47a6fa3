//go:build linux

package sandbox

import (
	"strings"
	"testing"
)

func TestDockerSocketFromDockerHost(t *testing.T) {
	for _, tc := range []struct{ host, want, err string }{
		{"", DefaultDockerSocket, ""},
		{"unix:///run/user/1000/docker.sock", "/run/user/1000/docker.sock", ""},
		{"/srv/docker.sock", "/srv/docker.sock", ""},
		{"tcp://127.0.0.1:2375", "", "only unix:// sockets are supported, not tcp://"},
		{"ssh://me@host", "", "not ssh://"},
		{"unix://relative.sock", "", "want unix:///ABSOLUTE/PATH"},
	} {
		got, err := DockerSocket(tc.host)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.host) {
				t.Errorf("DockerSocket(%q) = %q, %v; want an error naming it with %q", tc.host, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("DockerSocket(%q) = %q, %v; want %q", tc.host, got, err, tc.want)
		}
	}
}
