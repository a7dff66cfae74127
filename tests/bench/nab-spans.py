import sys, json
sys.path.insert(0, '/work/shared/tools')
import nab_score as ns
data = sys.argv[1]
labels = ns.load_labels(data + '/combined_windows.json')
out = {}
for key in sorted(labels):
    times = ns.load_series_times(data, key)
    idx = ns.RowIndex(times)
    out[key] = {"rows": len(times), "probation": ns.probation_rows(len(times)),
                "spans": ns.window_rows(times, labels[key], idx)}
json.dump(out, sys.stdout)
