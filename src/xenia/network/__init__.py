"""Networks: Linux bridges (xenbr0), taps for guests, NAT networks with DHCP, rate limits."""
