"""The cluster foundation: etcd member, client, lease and fencing, key layout."""
