#!/bin/sh
# Runs `mpirun ARGS…` with 3 ranks on two test hosts: network namespaces joined by veth
# pairs on a bridge (2 ranks on the first, 1 on the second), then removes them.
# Needs root and iproute2. Used by `cargo bench --features mpi --bench cluster`.
set -eu
tag=$$
a=mpba$tag; b=mpbb$tag; br=mpbbr$tag; net=10.99.77
agent=$(mktemp)
cleanup() {
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
    ip link del "$br" 2>/dev/null || true
    rm -f "$agent"
}
trap cleanup EXIT
ip link add "$br" type bridge
ip addr add "$net.254/24" dev "$br"
ip link set "$br" up
i=0
for ns in "$a" "$b"; do
    i=$((i + 1))
    ip netns add "$ns"
    ip link add "mpbo$i$tag" type veth peer name "mpbi$i$tag"
    ip link set "mpbo$i$tag" master "$br" up
    ip link set "mpbi$i$tag" netns "$ns"
    ip netns exec "$ns" ip addr add "$net.$i/24" dev "mpbi$i$tag"
    ip netns exec "$ns" ip link set "mpbi$i$tag" up
    ip netns exec "$ns" ip link set lo up
done
cat >"$agent" <<AGENT
#!/bin/sh
host="\$1"; shift
case "\$host" in
  $net.1) ns=$a ;;
  $net.2) ns=$b ;;
  *) exit 1 ;;
esac
exec ip netns exec "\$ns" /bin/sh -c "\$*"
AGENT
chmod 755 "$agent"
mpirun --oversubscribe -n 3 --host "$net.1:2,$net.2:1" --mca plm_rsh_agent "$agent" \
    --mca btl tcp,self --mca osc pt2pt --mca oob_tcp_if_include "$net.0/24" \
    --mca btl_tcp_if_include "$net.0/24" "$@"
