#!/usr/bin/env bash
# Refreshes the chat page's vendored libraries from the npm registry at the versions pinned here.
# Each tarball must match its pinned sha256, so a refresh brings exactly the reviewed files.
# To move to a new version: change the version and the hash (sha256sum of `npm pack NAME@VERSION`),
# run this script, run the e2e tests, and commit spa/vendor/ with README's table.
set -euo pipefail
cd "$(dirname "$0")"

REGISTRY=https://registry.npmjs.org
# package, version, tarball sha256, then "source-in-package:file-here" pairs
PACKAGES=(
  "marked 18.2.1 d66c5213fc203466186060105b01f51896764ba64b3797d2620d02e28e34b8ca lib/marked.esm.js:marked.esm.js LICENSE:marked.LICENSE"
  "dompurify 3.5.0 faa5f2bfe2814384b83d6edb4ed66812fbfdb2a654b4d59edd4b12304058ec20 dist/purify.es.mjs:purify.es.js LICENSE:dompurify.LICENSE"
  "@highlightjs/cdn-assets 11.12.0 b8a006d30f45afe783072569f3d69c5b60c0e7b9ca28cd474e12f2584e2a3bd9 es/highlight.min.js:highlight.min.js styles/github-dark.min.css:highlight-github-dark.min.css LICENSE:highlight.LICENSE"
  "katex 0.19.1 24da5a599eb2fcede2e270b99a6ff48bca816beecc95feeb84e8cccbd1bb34fd dist/katex.mjs:katex.js dist/katex.min.css:katex.min.css dist/fonts:fonts LICENSE:katex.LICENSE"
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for entry in "${PACKAGES[@]}"; do
  read -r name version sha256 files <<<"$entry"
  tarball="$work/$(basename "$name")-$version.tgz"
  curl -fsSL "$REGISTRY/$name/-/$(basename "$name")-$version.tgz" -o "$tarball"
  echo "$sha256  $tarball" | sha256sum --check --quiet
  mkdir -p "$work/$name" && tar -xzf "$tarball" -C "$work/$name"
  for pair in $files; do
    source="$work/$name/package/${pair%%:*}" target="${pair##*:}"
    if [[ -d "$source" ]]; then  # KaTeX's fonts: woff2 is what every browser that runs ES modules loads
      rm -rf "$target" && mkdir -p "$target" && cp "$source"/*.woff2 "$target"/
    else
      cp "$source" "$target"
    fi
  done
  echo "$name $version"
done
