package packet

// TCP header flags (the 14th byte of the header), as the data plane's
// connection trackers (the balancer's conntrack, the routing mesh's
// ingress-return table, the published-port NAT) and segmentation read
// and rewrite them.
const (
	TCPFIN = 0x01
	TCPSYN = 0x02
	TCPRST = 0x04
	TCPPSH = 0x08
	TCPACK = 0x10
	TCPCWR = 0x80
)
