// Maps and Sets that remember recent things (turn ids, calls, grammars) keep only their newest entries: insertion
// order is age, so the oldest go first.

/** Drops the oldest entries of a Map or Set (its insertion order) beyond `max`. */
export function dropOldest(collection: Map<unknown, unknown> | Set<unknown>, max: number): void {
  for (const key of collection.keys()) {
    if (collection.size <= max) return;
    collection.delete(key);
  }
}

/** Sets `key` as the map's newest entry (a Map keeps a key's first place, so it is deleted first), then bounds it. */
export function setNewest<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  map.delete(key);
  map.set(key, value);
  dropOldest(map, max);
}
