package cniplugin

import "testing"

// FuzzParseConfig feeds arbitrary network configurations (the plugin's
// stdin, written by whoever wrote the conflist) to the parser: it never
// panics, and an accepted configuration always names a network.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(goodConf), "IP=10.9.0.7")
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","network":"web","socket":"/s","runtimeConfig":{"ips":["10.9.0.7/24"],"aliases":{"n":["a"]}},"args":{"cni":{"ips":["10.9.0.7"]}}}`), "")
	f.Add([]byte(`{"name":"n","network":"web","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.2/24"}]}}`), "IP=;;")
	f.Add([]byte(`[]`), "")
	f.Fuzz(func(t *testing.T, data []byte, cniArgs string) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if c.Network == "" {
			t.Fatalf("accepted %q without a network", data)
		}
		if a, bits, err := c.FixedIP(cniArgs); err == nil && a.IsValid() && (!a.Is4() || bits > 32) {
			t.Fatalf("FixedIP gave %v/%d", a, bits)
		}
		c.Aliases()
		_, _ = prevResult(c)
	})
}
