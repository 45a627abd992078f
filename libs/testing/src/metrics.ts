/** What metricSum reads: a prom-client Registry (structurally, so this package needs no prom-client). */
export interface MetricRegistry {
  getSingleMetric(name: string):
    | { get(): Promise<{ values: Array<{ value: number; labels: Record<string, unknown>; metricName?: string }> }> }
    | undefined;
}

/**
 * The sum of a metric's series in a service's own registry whose labels match `labels` (a histogram: its
 * observation count). Throws for a metric the registry does not have, so a misspelt name cannot read as 0.
 */
export async function metricSum(registry: MetricRegistry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric ${name}`);
  const { values } = await metric.get();
  return values
    .filter((v) => (v.metricName ?? name) === name || v.metricName === `${name}_count`)
    .filter((v) => Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want))
    .reduce((sum, v) => sum + v.value, 0);
}
