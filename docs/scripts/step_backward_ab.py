"""The step API's backward at (B, I, H) = (1, 512, 512), float32 and float64, one thread:
medians of 150 calls in microseconds, as JSON. Run under two builds (PYTHONPATH) and each
SEQKERN_MAX_ISA level, with and without a busy process beside it, to compare them."""
import sys, time, json, numpy as np, seqkern
from threadpoolctl import threadpool_limits
seqkern.set_num_threads(1); threadpool_limits(1)
def med(f, n=150):
    for _ in range(10): f()
    ts=[]
    for _ in range(n):
        t0=time.perf_counter(); f(); ts.append(time.perf_counter()-t0)
    return np.median(ts)*1e6
rng=np.random.default_rng(0); out={}
for kind,G in (("rnn",1),("gru",3),("lstm",4)):
  for dt in (np.float32,np.float64):
    B,I,H=1,512,512
    x=rng.standard_normal((B,I)).astype(dt); h=np.zeros((B,H),dt)
    Wih=rng.uniform(-.04,.04,(G*H,I)).astype(dt); Whh=rng.uniform(-.04,.04,(G*H,H)).astype(dt); b=np.zeros(G*H,dt)
    st=(h,h) if kind=="lstm" else (h,)
    r=getattr(seqkern,f"{kind}_step_forward")(x,*st,Wih,Whh,b,b); cache=r[-1]; dh=np.ones((B,H),dt)
    bwd=getattr(seqkern,f"{kind}_step_backward")
    f=(lambda: bwd(dh,None,cache)) if kind=="lstm" else (lambda: bwd(dh,cache))
    out[f"{kind} {dt.__name__}"]=med(f)
print(json.dumps(out))
