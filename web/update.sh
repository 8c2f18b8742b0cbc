#!/usr/bin/env bash
# Re-fetches the Converse.js release pinned in web/package.json + web/package-lock.json from the npm
# registry and copies the files kabar serves into web/dist/ (committed; embedded into the binary by
# crates/kabar/build.rs). See docs/WEBCLIENT.md.
#
#   web/update.sh              reinstall the pinned version (integrity checked by npm ci) and refresh dist/
#   web/update.sh 14.0.1       pin another version first (rewrites package.json and package-lock.json)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [ $# -gt 0 ]; then
  npm install --save-exact --package-lock-only --ignore-scripts --no-audit --no-fund "converse.js@$1"
fi
npm ci --ignore-scripts --no-audit --no-fund
SRC=node_modules/converse.js/dist
VERSION="$(node -p 'require("./node_modules/converse.js/package.json").version')"

# What the browser loads: the minified bundle and stylesheet, the chunks it imports lazily (locales),
# the assets it fetches relative to assets_path (/dist): emoji data, images, fonts, sounds, and the
# OMEMO crypto module. Left out: unminified builds, source maps, website.css, manifest.json.
FILES=(converse.min.js converse.min.css emoji.json libomemo.esm.min.js curve25519_compiled.wasm
       shared-connection-worker.js chunkjs images webfonts sounds)
rm -rf dist.new
mkdir dist.new
for f in "${FILES[@]}"; do
  cp -r "$SRC/$f" dist.new/
done
cp node_modules/converse.js/LICENSE dist.new/LICENSE   # MPL-2.0
# Nothing else than what the server needs to serve: drop READMEs and the like from asset folders.
find dist.new -type f -name 'README*' -delete
echo "$VERSION" > dist.new/VERSION
rm -rf dist
mv dist.new dist
echo "web/dist: Converse.js $VERSION, $(find dist -type f | wc -l) files, $(du -sh dist | cut -f1)"
