// poll.mjs BASE TOKEN N SECONDS: N simulated dashboards in one process, each
// asking every 2 s for what the pages poll (the fleet counts, a page of 50
// devices, the campaign list) over keep-alive connections, for at most
// SECONDS. Prints the requests made and their mean latency when stopped.
const [base, token, n, seconds] = [process.argv[2], process.argv[3], Number(process.argv[4]), Number(process.argv[5] || 600)];
const paths = ['/v1/dashboard/fleet', '/v1/dashboard/devices?limit=50', '/v1/campaigns'];
let requests = 0, errors = 0, totalMs = 0;
const headers = { Authorization: `Bearer ${token}` };
async function dashboard() {
  for (;;) {
    for (const p of paths) {
      const t = performance.now();
      try {
        const r = await fetch(base + p, { headers });
        await r.arrayBuffer();
        if (!r.ok) errors++;
      } catch { errors++; }
      totalMs += performance.now() - t;
      requests++;
    }
    await new Promise((res) => setTimeout(res, 2000));
  }
}
const report = () => {
  console.log(`dashboards: ${n}, ${requests} requests, ${errors} errors, mean ${(totalMs / Math.max(1, requests)).toFixed(1)} ms`);
  process.exit(0);
};
process.on('SIGTERM', report);
process.on('SIGINT', report);
setTimeout(report, seconds * 1000);
for (let i = 0; i < n; i++) setTimeout(dashboard, (2000 * i) / n); // spread over the period
