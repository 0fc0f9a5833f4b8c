#!/usr/bin/env bash
# Builds the directory tree of Cell's `base` guest image with debootstrap (no mounts, no loop
# devices). Usage: build.sh OUT_TREE
# Called by `cell image build`, which caches the tree by the hash of this recipe and then turns it
# (with envd as init) into an ext4 image with `mkfs.ext4 -d`.
# CELL_DEBIAN_MIRROR overrides debootstrap's default mirror.
set -euo pipefail
out=$1
suite=bookworm
packages=bash,coreutils,python3,nodejs,git,curl,ca-certificates,procps,sudo,iproute2,less,xz-utils,libnss-myhostname
rm -rf "$out"
mkdir -p "$out"
echo "step: debootstrap $suite (minbase + $packages)"
debootstrap --variant=minbase --include="$packages" "$suite" "$out" ${CELL_DEBIAN_MIRROR:-} >"$out.debootstrap.log" 2>&1 || {
  echo "debootstrap failed; last lines of $out.debootstrap.log:" >&2
  tail -n 20 "$out.debootstrap.log" >&2
  exit 5
}
# npm (E2B's npmInstall): npm's own release, pinned and checked, unpacked where node's official
# images put it. Debian's npm is ~420 node-* packages (160 MB) that debootstrap cannot resolve
# and that make every apt-get in a build slower (a larger dpkg database).
npm_version=10.9.9
npm_sha512=1g+6jLQvaIuB4zwvHL7yrXuXcWZwDsCtBX8bbWDqbvJSSr9nPiDDWTHNgwXR27iIcTTW7v3A57hDW9RYv2W4Yg==
echo "step: npm $npm_version"
curl -fsSL --retry 3 -o "$out.npm.tgz" "${CELL_NPM_REGISTRY:-https://registry.npmjs.org}/npm/-/npm-$npm_version.tgz"
want=$(echo "$npm_sha512" | base64 -d | od -An -tx1 -v | tr -d ' \n')
got=$(sha512sum "$out.npm.tgz" | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "npm-$npm_version.tgz: sha512 $got, want $want" >&2; exit 6; }
mkdir -p "$out/usr/local/lib/node_modules/npm" "$out/usr/local/bin"
tar -xzf "$out.npm.tgz" -C "$out/usr/local/lib/node_modules/npm" --strip-components=1 --no-same-owner
rm -f "$out.npm.tgz"
ln -sfn ../lib/node_modules/npm/bin/npm-cli.js "$out/usr/local/bin/npm"
ln -sfn ../lib/node_modules/npm/bin/npx-cli.js "$out/usr/local/bin/npx"
chmod 0755 "$out/usr/local/lib/node_modules/npm/bin/npm-cli.js" "$out/usr/local/lib/node_modules/npm/bin/npx-cli.js"
# Global packages go under /usr/local, as with node's own installers.
echo 'prefix=/usr/local' > "$out/usr/local/lib/node_modules/npm/npmrc"
chroot "$out" /usr/local/bin/npm --version >/dev/null
echo "step: configuring users and system files"
chroot "$out" /usr/sbin/groupadd --gid 1000 user
chroot "$out" /usr/sbin/useradd --uid 1000 --gid 1000 --create-home --home-dir /home/user --shell /bin/bash user
chroot "$out" /usr/sbin/usermod -aG sudo user
echo 'user ALL=(ALL:ALL) NOPASSWD: ALL' > "$out/etc/sudoers.d/user"
chmod 0440 "$out/etc/sudoers.d/user"
echo sandbox > "$out/etc/hostname"
printf '127.0.0.1 localhost\n' > "$out/etc/hosts"
# Every sandbox has its own host name (its id), set by envd at boot and after each restore.
# nss-myhostname resolves it with no file to rewrite on the way (a write to /etc/hosts cost
# ~35 ms of a restore's /init on a cold TCG guest); without it, sudo looks it up in DNS and
# complains on every call.
grep -q '^hosts:.*myhostname' "$out/etc/nsswitch.conf" ||
  sed -i 's/^hosts:.*files/& myhostname/' "$out/etc/nsswitch.conf"
grep -q '^hosts:.*myhostname' "$out/etc/nsswitch.conf"
# envd writes the resolver (the gateway) at every boot: into /run, a tmpfs, through this link. On
# the ext4 root the rewrite truncated and reallocated the file, which ran ext4's block allocator
# and its first bitmap reads in every cold boot.
ln -sfn ../run/resolv.conf "$out/etc/resolv.conf"
printf '/dev/vda / ext4 rw,relatime 0 1\n' > "$out/etc/fstab"
# E2B's SDKs run every command in a login shell (bash -l -c), whose /etc/profile asks `id -u`
# whether it runs as root: a fork and exec that costs ~50 ms in a TCG guest. bash knows $EUID.
sed -i 's/"$(id -u)"/"${EUID:-$(id -u)}"/g' "$out/etc/profile"
grep -q 'EUID:-' "$out/etc/profile"
echo "step: trimming caches and documentation"
chroot "$out" /usr/bin/apt-get clean
rm -rf "$out"/var/lib/apt/lists/* "$out"/var/cache/apt/*.bin "$out"/var/log/*.log \
  "$out"/usr/share/doc/* "$out"/usr/share/man/* "$out"/usr/share/info/* "$out"/usr/share/locale/* \
  "$out"/tmp/* "$out"/root/.npm
find "$out" -name '__pycache__' -prune -exec rm -rf {} +
echo "step: done"
