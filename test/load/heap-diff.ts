// What a service's calls keep alive, by kind of object: compares two V8 heap snapshots of one process (the bench's
// `--heap-snapshots`: idle, and loaded with every call live) and prints the kinds that grew the most, per call.
//   node test/load/dist/heap-diff.js <idle.heapsnapshot> <loaded.heapsnapshot> <calls> [rows]
// A kind is a constructor name for objects, or the snapshot's node type (strings, arrays, code, native memory such
// as Buffers' backing stores). Self sizes only: a Map's entries count under the Map, its keys under strings.
import { readFileSync } from "node:fs";

interface Kind {
  bytes: number;
  count: number;
}

interface HeapSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

function kinds(file: string): { byKind: Map<string, Kind>; total: number } {
  const heap = JSON.parse(readFileSync(file, "utf8")) as HeapSnapshot;
  const fields = heap.snapshot.meta.node_fields;
  const types = heap.snapshot.meta.node_types[0];
  const [typeAt, nameAt, sizeAt] = ["type", "name", "self_size"].map((f) => fields.indexOf(f));
  const byKind = new Map<string, Kind>();
  let total = 0;
  for (let i = 0; i < heap.nodes.length; i += fields.length) {
    const type = types[heap.nodes[i + typeAt]];
    const name = heap.strings[heap.nodes[i + nameAt]];
    const kind = type === "object" || type === "closure" || type === "native" || type === "array" ? `${type} ${name.slice(0, 60)}` : `(${type})`;
    const size = heap.nodes[i + sizeAt];
    total += size;
    const entry = byKind.get(kind) ?? { bytes: 0, count: 0 };
    entry.bytes += size;
    entry.count++;
    byKind.set(kind, entry);
  }
  return { byKind, total };
}

const [idleFile, loadedFile, callsArg, rowsArg] = process.argv.slice(2);
const calls = Number(callsArg);
if (!idleFile || !loadedFile || !(calls > 0)) {
  console.error("usage: heap-diff <idle.heapsnapshot> <loaded.heapsnapshot> <calls> [rows]");
  process.exit(2);
}
const idle = kinds(idleFile);
const loaded = kinds(loadedFile);
const rows = [...new Set([...idle.byKind.keys(), ...loaded.byKind.keys()])].map((kind) => {
  const before = idle.byKind.get(kind) ?? { bytes: 0, count: 0 };
  const after = loaded.byKind.get(kind) ?? { bytes: 0, count: 0 };
  return { kind, bytes: after.bytes - before.bytes, count: after.count - before.count };
});
rows.sort((a, b) => b.bytes - a.bytes);
const kb = (bytes: number) => (bytes / 1024 / calls).toFixed(2).padStart(8);
console.log(`heap ${(idle.total / 1048576).toFixed(1)} MB idle, ${(loaded.total / 1048576).toFixed(1)} MB loaded: ${kb(loaded.total - idle.total).trim()} KB per call`);
console.log(`${"KB/call".padStart(8)} ${"objs/call".padStart(9)}  kind`);
for (const row of rows.slice(0, Number(rowsArg) || 30)) console.log(`${kb(row.bytes)} ${(row.count / calls).toFixed(1).padStart(9)}  ${row.kind}`);
