#!/usr/bin/env bash
# Static checks of docker/: no Docker engine runs here, so this makes sure the
# image's packages exist in Debian 12, the files it copies are built, and the
# compose file's settings are ones a node accepts.
# Usage: check_docker.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$1
build=$2
fail() { echo "check_docker: $*" >&2; exit 1; }

dockerfile="$src/docker/Dockerfile"
compose="$src/docker/compose.yaml"
[[ -f $dockerfile ]] || fail "missing $dockerfile"
[[ -f $compose ]] || fail "missing $compose"
[[ -f $src/.dockerignore ]] && grep -qx 'build/' "$src/.dockerignore" \
  || fail ".dockerignore must keep build/ out of the image context"

# Runtime packages named in the image must be real bookworm packages.
pkgs=$(awk '/apt-get install/,/rm -rf/' "$dockerfile" | tr ' \\' '\n\n' \
       | grep -E '^(lib[a-z0-9.+-]+|bubblewrap|python3)$' || true)
[[ -n $pkgs ]] || fail "no runtime packages found in $dockerfile"
for p in $pkgs; do
  apt-cache show "$p" >/dev/null 2>&1 || fail "package $p in $dockerfile does not exist"
done

# Files copied from the build stage are what the build produces.
for f in $(grep -o 'COPY --from=build /src/build/[^ ]*' "$dockerfile" | sed 's|.*/src/build/||'); do
  [[ -x $build/$f ]] || fail "$dockerfile copies build/$f, which the build does not produce"
done

# The binary it runs links only libraries those packages provide.
missing=$(ldd "$build/kowalski" | awk '/not found/ {print $1}')
[[ -z $missing ]] || fail "kowalski needs libraries that are not installed: $missing"
for lib in $(ldd "$build/kowalski" | awk '/=> \// {print $3}'); do
  owner=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null | head -1 | cut -d: -f1) || true
  [[ -z $owner ]] && owner=$(dpkg -S "$lib" 2>/dev/null | head -1 | cut -d: -f1) || true
  case "$owner" in
    ""|libc6|libgcc-s1|libstdc++6|libcrypt1|zlib1g) ;;
    *) grep -qw "$owner" <<<"$pkgs" || fail "kowalski links $lib from $owner, not in $dockerfile" ;;
  esac
done

# Every KOWALSKI_* variable the image or compose sets must be accepted.
vars=$(grep -ohE 'KOWALSKI_[A-Z_]+' "$dockerfile" "$compose" | sort -u \
       | grep -vE '^KOWALSKI_(CONFIG_FILE|HTTP_TOKEN)$')
help=$("$build/kowalski" serve --help)
for v in $vars; do
  grep -q "$v" <<<"$help" || fail "$v is set in docker/ but kowalski serve does not know it"
done
# The compose rig's backend command line must be one scripted-llm accepts.
"$build/tests/scripted-llm" --help >/dev/null || fail "scripted-llm --help failed"
grep -q 'entrypoint: \["scripted-llm", "--port", "11434"\]' "$compose" \
  || fail "compose llm service entrypoint changed; update this check"
echo "check_docker: ok ($(wc -w <<<"$pkgs") packages, $(wc -w <<<"$vars") settings)"
