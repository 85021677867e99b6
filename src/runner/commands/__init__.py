"""The commands a user runs beside a run itself, one module each: `python -m runner.<name>` runs
`runner.commands.<name>` (the module `runner.<name>` is that command's entry point and an alias of it).

bench     speed, side by side with the usual alternatives      lesson         the lectures' claims, one each
compare   a fair comparison: each arm's lr tuned                lr_find        the learning-rate range test
ensemble  average run directories' predictions                  pictures       the optimizer race on 2-D surfaces
grid      the option grid at runner's defaults                  report         a sweep's ranked table and plots
results   the published numbers, regenerated                    transfer_grid  the lecture's 2x2 transfer grid
"""
