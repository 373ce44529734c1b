"""(σ, λ) of the Nyström model on a QM9 validation set, sharing one distance matrix across σ.

Same split as benchmarks/large_n.py (seed-0 permutation; validation = the 3,000 molecules after the first
110,831); features from the cache large_n.py writes. Prints the validation MAE and the CG iterations per (σ, λ).

    python benchmarks/large_n_tune.py N M SIGMAS LAMS TOL
    python benchmarks/large_n_tune.py 20000 5000 85,120,170,340 1e-10,1e-9,1e-8 1e-5
"""
import os
import numpy as np, time, sys, warnings
warnings.simplefilter("ignore")
from molkrr.kernels import squared_distances
from molkrr.solvers.falkon import preconditioned_cg, choose_centers
CACHE = os.environ.get("MOLKRR_BENCH_CACHE", "/work/cache")
X=np.load(os.path.join(CACHE, "qm9_fchl19_X.npy"), mmap_mode="r"); E=np.load(os.path.join(CACHE, "qm9_energies_kcal.npy"))
perm=np.random.default_rng(0).permutation(len(E))
n=int(sys.argv[1]); m=int(sys.argv[2]); tol=float(sys.argv[5]); va=perm[110831:113831]; tr=perm[:n]
Xtr=np.ascontiguousarray(X[tr]); ytr=E[tr]; Xva=np.ascontiguousarray(X[va]); yva=E[va]
mu=ytr.mean(); c=choose_centers(n,m,0); C=Xtr[c]
t=time.perf_counter()
D=squared_distances(Xtr,C); Dmm=squared_distances(C,C); Dva=squared_distances(Xva,C)
print("distances", time.perf_counter()-t, flush=True)
for sigma in [float(v) for v in sys.argv[3].split(",")]:
  g=-0.5/sigma**2
  K=np.exp(D*g)
  for lam in [float(v) for v in sys.argv[4].split(",")]:
    t=time.perf_counter()
    r=preconditioned_cg(lambda V: K.T@(K@V), K.T@(ytr-mu), lambda: np.exp(Dmm*g), n, lam, tol=tol, max_iter=400)
    print(n,m,sigma,lam,r.n_iter,"val MAE %.4f"%np.mean(np.abs(np.exp(Dva*g)@r.alpha+mu-yva)), "%.1f s"%(time.perf_counter()-t), flush=True)
  del K
