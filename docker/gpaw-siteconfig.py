# GPAW build configuration, read by GPAW's setup.py through GPAW_CONFIG (Makefile and
# Dockerfile): a serial build against libxc and the system BLAS. Without it, GPAW builds
# against MPI as soon as mpic++ is on PATH, and quantum-espresso's dependency openmpi-bin
# puts it there without the MPI headers, so the build fails.
mpi = False
libraries = ['xc', 'blas']
