#!/usr/bin/env bash
# `make oci`: packages the filter as an OCI image layout that Istio's WasmPlugin can pull
# (`url: oci://...`), then prints how to push it and the `sha256` the WasmPlugin needs.
#
#   scripts/oci.sh [WASM] [OUT_DIR]     defaults: target/wasm32-wasip1/release/tollgate.wasm, target/oci
#   TAG=0.1.0 scripts/oci.sh            the tag recorded in index.json (default: the crate version)
#
# The image is the "compat" variant of the Wasm image spec that Istio's image fetcher reads
# (istio/istio pkg/wasm/imagefetcher.go): an ordinary OCI image manifest whose single layer is a
# gzipped tar (application/vnd.oci.image.layer.v1.tar+gzip) holding `plugin.wasm`. Istio does not
# read a manifest whose layer is the bare module (application/vnd.wasm.content.layer.v1+wasm, as
# `wasm-to-oci` and `oras push file.wasm` make): it reports "could not parse as compat variant:
# invalid media type application/vnd.wasm.content.layer.v1+wasm".
#
# For an oci:// URL Istio compares the WasmPlugin's `sha256` with the digest of the image
# manifest (not of the module), so that is the digest printed for the WasmPlugin. Pushing with
# `oras cp --from-oci-layout` or `crane push` keeps the manifest bytes, hence the digest.
#
# Only bash, coreutils and the Python 3 standard library: no registry, no downloads. The
# layout is reproducible: same module, same bytes (fixed tar header, gzip without a timestamp).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

wasm=${1:-target/wasm32-wasip1/release/tollgate.wasm}
out=${2:-target/oci}
tag=${TAG:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)}

if [[ ! -f "$wasm" ]]; then
  echo "oci: $wasm is missing: run \`make wasm\` first (\`make oci\` does)" >&2
  exit 1
fi
if ! command -v python3 >/dev/null; then
  echo "oci: python3 is required" >&2
  exit 1
fi
case "$out" in
  "" | / | . | ..) echo "oci: refusing to write the layout to '$out'" >&2; exit 1 ;;
esac

rm -rf "$out"
mkdir -p "$out/blobs/sha256"

digests=$(python3 - "$wasm" "$out" "$tag" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile

wasm_path, out, tag = sys.argv[1], sys.argv[2], sys.argv[3]
module = open(wasm_path, "rb").read()
if module[:4] != b"\0asm":
    sys.exit(f"oci: {wasm_path} is not a WebAssembly module")

def blob(data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}

def canonical(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()

# The layer: a tar with one file, plugin.wasm, with a fixed header, then gzip without a
# timestamp or file name, so that the same module always gives the same digest.
tar_bytes = io.BytesIO()
with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    info = tarfile.TarInfo("plugin.wasm")
    info.size, info.mode, info.mtime = len(module), 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(module))
uncompressed = tar_bytes.getvalue()
layer = blob(gzip.compress(uncompressed, compresslevel=9, mtime=0))

config = blob(canonical({
    "architecture": "wasm",
    "os": "wasip1",
    "config": {},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(uncompressed).hexdigest()]},
}))

manifest_bytes = canonical({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    "annotations": {
        "module.wasm.image/variant": "compat",
        "org.opencontainers.image.title": "tollgate",
        "org.opencontainers.image.version": tag,
    },
})
manifest = blob(manifest_bytes)

with open(os.path.join(out, "oci-layout"), "wb") as f:
    f.write(canonical({"imageLayoutVersion": "1.0.0"}))
with open(os.path.join(out, "index.json"), "wb") as f:
    f.write(canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            **manifest,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    }))

print(manifest["digest"].removeprefix("sha256:"), hashlib.sha256(module).hexdigest())
PY
)
read -r image_digest module_sha256 <<<"$digests"

cat <<EOT
$out: OCI image layout of $wasm, tag $tag
  image (manifest) digest: sha256:$image_digest
  module sha256:           $module_sha256  (the .wasm itself: for file:// or https:// URLs)

Push it with either tool (REGISTRY is yours, e.g. ghcr.io/acme):
  oras cp --from-oci-layout $out:$tag "\$REGISTRY/tollgate:$tag"
  crane push $out "\$REGISTRY/tollgate:$tag"

Then in deploy/istio/wasmplugin.yaml:
  url: oci://\$REGISTRY/tollgate:$tag
  sha256: $image_digest
EOT
